"""Generation: the one_way reference cache changes nothing but cost, guidance follows its formula,
and bad inputs get errors naming both sides."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_model_helpers import FAMILIES, forward_kwargs, shard_batch

from vap.errors import ModelError
from vap.training.attention import ReferenceCache
from vap.training.model import VAPTransformer
from vap.training.pipeline import VAPPipeline

RNG = np.random.default_rng(0)
REFERENCE = RNG.integers(0, 255, (9, 40, 48, 3), dtype=np.uint8)  # resized/cropped to 32×32
IMAGE = RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_reference_equals_recomputed_reference(tiny_backbones, family):
    model = VAPTransformer.from_backbone(str(tiny_backbones[family]), family, blocks="all",
                                         reference_attention="one_way")
    kw = forward_kwargs(model, shard_batch(family))
    cache = ReferenceCache()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for step, t in enumerate((900, 500, 100)):
            x = torch.randn(kw["hidden_states"].shape, generator=g)
            step_kw = dict(kw, hidden_states=x, timestep=torch.tensor([t, t]))
            uncached = model(**step_kw).sample
            if step:  # later steps must not even need the reference: it comes from the cache
                step_kw["reference_hidden_states"] = torch.full_like(kw["reference_hidden_states"], 1e3)
            cached = model(**step_kw, reference_cache=cache).sample
            torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=0)
    assert cache.filled and len(cache) == len(model.expert.blocks)


def test_the_cache_needs_one_way(tiny_backbones):
    model = VAPTransformer.from_backbone(str(tiny_backbones["cogvideox"]), "cogvideox", blocks="all")
    kw = forward_kwargs(model, shard_batch("cogvideox"))
    with pytest.raises(ModelError, match="one_way"):
        model(**kw, reference_cache=ReferenceCache())


def test_one_way_reference_ignores_the_target(tiny_backbones):
    """In one_way the reference stream never sees the target: that is what makes it cacheable."""
    model = VAPTransformer.from_backbone(str(tiny_backbones["wan"]), "wan", blocks="all",
                                         reference_attention="one_way")
    kw = forward_kwargs(model, shard_batch("wan"))
    caches = [ReferenceCache(), ReferenceCache()]
    with torch.no_grad():
        model(**kw, reference_cache=caches[0])
        model(**dict(kw, hidden_states=torch.randn_like(kw["hidden_states"]), timestep=torch.tensor([7, 7])),
              reference_cache=caches[1])
    for i, (k, v) in caches[0].kv.items():
        assert torch.equal(k, caches[1].kv[i][0]) and torch.equal(v, caches[1].kv[i][1])


def pipeline(tiny_backbones, family, **kw) -> VAPPipeline:
    return VAPPipeline.from_backbone(str(tiny_backbones[family]), family, blocks="all", device="cpu", **kw)


def run(pipe, **kw):
    args = dict(num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="latent")
    args.update(kw)
    return pipe(IMAGE, "a cat turns into a statue", REFERENCE, "a dog turns into a statue", height=32, width=32,
                **args)


@pytest.mark.parametrize("family", FAMILIES)
def test_pipeline_cache_changes_nothing(tiny_backbones, family):
    pipe = pipeline(tiny_backbones, family, reference_attention="one_way")
    cached = run(pipe, cache_reference=True).latents
    recomputed = run(pipe, cache_reference=False).latents
    torch.testing.assert_close(cached, recomputed, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_pipeline_returns_frames_and_is_seeded(tiny_backbones, family):
    pipe = pipeline(tiny_backbones, family)
    a = run(pipe, output_type="np", num_inference_steps=2)
    b = run(pipe, output_type="np", num_inference_steps=2)
    c = run(pipe, output_type="np", num_inference_steps=2, generator=torch.Generator().manual_seed(1))
    assert a.frames.shape == (9, 32, 32, 3) and a.frames.dtype == np.uint8
    assert np.array_equal(a.frames, b.frames) and not torch.equal(a.latents, c.latents)


def test_guidance_is_linear_in_both_scales(tiny_backbones):
    """One step: the update is linear in the prediction, so the output moves linearly with each
    scale — ε = ε_u + g(ε_c − ε_u) + r(ε_c − ε_no_ref)."""
    pipe = pipeline(tiny_backbones, "cogvideox")
    one = dict(num_inference_steps=1)
    base = run(pipe, guidance_scale=2.0, **one).latents
    r1 = run(pipe, guidance_scale=2.0, reference_guidance_scale=1.0, **one).latents
    r3 = run(pipe, guidance_scale=2.0, reference_guidance_scale=3.0, **one).latents
    assert (r1 - base).abs().max() > 1e-4  # the reference term does something ...
    torch.testing.assert_close(r3 - base, 3 * (r1 - base), atol=1e-4, rtol=1e-3)  # ... proportionally
    g4 = run(pipe, guidance_scale=4.0, **one).latents
    g6 = run(pipe, guidance_scale=6.0, **one).latents
    torch.testing.assert_close(g6 - g4, g4 - base, atol=1e-4, rtol=1e-3)


def test_reference_guidance_is_nothing_when_the_expert_is_absent(tiny_backbones):
    pipe = VAPPipeline.from_backbone(str(tiny_backbones["wan"]), "wan", blocks=[], device="cpu")
    a = run(pipe, num_inference_steps=1).latents
    b = run(pipe, num_inference_steps=1, reference_guidance_scale=5.0).latents
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_mismatched_frame_count_is_refused(tiny_backbones):
    pipe = pipeline(tiny_backbones, "cogvideox")
    with pytest.raises(ModelError, match="num_frames=5 but the reference video has 9 frames"):
        run(pipe, num_frames=5)


@pytest.mark.parametrize("family", FAMILIES)
def test_without_expert_blocks_generation_is_the_backbones(tiny_backbones, family):
    """reference_video=None runs the backbone alone; with no expert block the reference cannot
    reach the target, so both generations agree."""
    pipe = VAPPipeline.from_backbone(str(tiny_backbones[family]), family, blocks=[], device="cpu")
    with_reference = run(pipe, num_inference_steps=2).latents
    backbone_only = pipe(IMAGE, "a cat turns into a statue", None, "", height=32, width=32, num_frames=9,
                         num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                         output_type="latent").latents
    torch.testing.assert_close(with_reference, backbone_only, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_transformer_agrees_with_float32(tiny_backbones, family):
    """GPUs run the transformer in bfloat16 (Wan keeps some modules in float32): same result,
    to bfloat16's precision."""
    full = run(pipeline(tiny_backbones, family, reference_attention="one_way"), num_inference_steps=2).latents
    half = run(pipeline(tiny_backbones, family, reference_attention="one_way", torch_dtype=torch.bfloat16),
               num_inference_steps=2).latents
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    # bfloat16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.2 % per operation); through 2
    # blocks × 2 steps the errors add to ~1 %: 5 % of the mean magnitude allows that, a wrong cast does not
    assert (half - full).abs().mean() < 0.05 * full.abs().mean()
