"""Generation does what it claims: the guidance formula by hand for one step, the reference
matters in `one_way` mode, and `models:/name@alias` generates with that version's expert.

Oracles: the transformer's own predictions combined by hand (ε_u + g(ε_c − ε_u) + r(ε_c − ε_n))
and stepped with a fresh copy of the backbone's diffusers scheduler; a direct `VAPPipeline` run
on the expert folder each version was registered from, with the same seed.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from vap.training.model import VAPTransformer
from vap.training.pipeline import VAPPipeline

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8)
REFERENCES = RNG.integers(0, 255, (2, 9, 32, 32, 3), dtype=np.uint8)
PROMPT, REF_PROMPT = "a cat turns into a statue", "a dog turns into a statue"


def run(pipe, reference=REFERENCES[0], seed=0, **kw):
    args = dict(num_inference_steps=1, output_type="latent", height=32, width=32, negative_prompt="blurry",
                reference_negative_prompt="blurry reference")
    args.update(kw)
    return pipe(IMAGE, PROMPT, reference, REF_PROMPT, generator=torch.Generator().manual_seed(seed), **args).latents


def perturbed_expert(tiny_backbones, family, folder, seed: int, mode: str = "joint"):
    """An expert that differs from the backbone (a trained one would), saved as `vap train` does."""
    model = VAPTransformer.from_backbone(str(tiny_backbones[family]), family, blocks="all", reference_attention=mode)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.expert_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    model.save_expert(folder)
    return folder


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
def test_guidance_by_hand_for_one_step(tiny_backbones, family, tmp_path, monkeypatch):
    g, r = 3.0, 2.0
    pipe = VAPPipeline.from_expert(perturbed_expert(tiny_backbones, family, tmp_path / "e", 1), device="cpu")
    scheduler = copy.deepcopy(pipe.scheduler)
    outputs, forward = [], pipe.transformer.forward

    def record(**kw):
        out = forward(**kw)
        outputs.append((kw, out.sample.float()))
        return out

    monkeypatch.setattr(pipe.transformer, "forward", record)
    got = run(pipe, guidance_scale=g, reference_guidance_scale=r, dynamic_cfg=False)
    (both_kw, both), (no_ref_kw, no_ref) = outputs  # [uncond, cond] with the reference, then cond without it
    assert "reference_hidden_states" in both_kw and "reference_hidden_states" not in no_ref_kw
    uncond, cond = both[:1], both[1:]
    assert not torch.allclose(cond, no_ref, atol=1e-4)  # the expert really moves the prediction
    eps = uncond + g * (cond - uncond) + r * (cond - no_ref)
    scheduler.set_timesteps(1)
    t = scheduler.timesteps[0]
    x = torch.randn(got.shape, generator=torch.Generator().manual_seed(0)) * getattr(scheduler, "init_noise_sigma", 1.0)
    want = scheduler.step(eps, t, x, return_dict=False)[0]
    # float32 throughout, the same operations in another order: ≈1e-6
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
@pytest.mark.parametrize("cache", [True, False])
def test_one_way_reference_changes_the_output(tiny_backbones, family, cache, tmp_path):
    pipe = VAPPipeline.from_expert(perturbed_expert(tiny_backbones, family, tmp_path / "e", 2, mode="one_way"),
                                   device="cpu")
    assert pipe.transformer.config.reference_attention == "one_way"
    a = run(pipe, REFERENCES[0], num_inference_steps=2, cache_reference=cache)
    b = run(pipe, REFERENCES[1], num_inference_steps=2, cache_reference=cache)
    # 1e-4 is ~100× float32 noise at these magnitudes (≈1): a real difference, not rounding
    assert (a - b).abs().max() > 1e-4


def test_a_registered_version_generates_with_its_own_expert(tiny_backbones, tmp_path, monkeypatch):
    """Two versions of one model, two aliases: each alias's video equals a direct pipeline run
    on the folder that version was registered from (same seed), and the two differ."""
    from mlflow import MlflowClient

    import vap.datasets.synth as synth
    from vap.datasets.encode import read_clip
    from vap.training.generate import generate, read_image

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking, registry_uri=tracking)
    client.create_registered_model("vap-oracle")
    folders = {}
    for alias, seed in (("champion", 3), ("challenger", 4)):
        folders[alias] = perturbed_expert(tiny_backbones, "cogvideox", tmp_path / alias, seed)
        version = client.create_model_version("vap-oracle", source=str(folders[alias]),
                                              tags={"backbone": str(tiny_backbones["cogvideox"]), "family": "cogvideox"})
        client.set_registered_model_alias("vap-oracle", alias, version.version)

    written, encode = [], synth.encode_mp4
    monkeypatch.setattr(synth, "encode_mp4", lambda frames, fps: written.append(frames) or encode(frames, fps))
    (tmp_path / "ref.mp4").write_bytes(encode(REFERENCES[0], 8.0))
    (tmp_path / "first.mp4").write_bytes(encode(REFERENCES[1], 8.0))
    size = dict(frames=9, fps=8.0, height=32, width=32, steps=2, seed=5)
    for alias in folders:
        generate(f"models:/vap-oracle@{alias}", str(tmp_path / "first.mp4"), PROMPT, str(tmp_path / "ref.mp4"),
                 REF_PROMPT, str(tmp_path / f"{alias}.mp4"), tracking_uri=tracking, progress=False, **size)
    ref = read_clip((tmp_path / "ref.mp4").read_bytes(), frames=9, fps=8.0, height=32, width=32)
    image = read_image(str(tmp_path / "first.mp4"))
    for alias, frames in zip(folders, written, strict=True):
        pipe = VAPPipeline.from_expert(folders[alias], device="cpu")
        direct = pipe(image, PROMPT, ref, REF_PROMPT, height=32, width=32, num_frames=9, num_inference_steps=2,
                      generator=torch.Generator().manual_seed(5)).frames
        assert np.array_equal(frames, direct), alias
    assert not np.array_equal(written[0], written[1])
