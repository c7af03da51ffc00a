"""Guidance and the reference stream's timestep as the authors sample them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_model_helpers import forward_kwargs, shard_batch

from vap.training.families import get_family
from vap.training.model import VAPTransformer
from vap.training.pipeline import VAPPipeline, dynamic_guidance_scale, guide

RNG = np.random.default_rng(0)
REFERENCE = RNG.integers(0, 255, (9, 32, 32, 3), dtype=np.uint8)
IMAGE = RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8)
# the authors' negative prompt (their MoT pipelines' default for the target and the reference)
AUTHORS_NEGATIVE = "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings"


def test_guide_is_the_formula_worked_by_hand():
    """ε = ε_u + g(ε_c − ε_u) + r(ε_c − ε_n) on numbers small enough to do by hand."""
    cond, uncond, no_ref = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.0])
    # 0.5 + 3·0.5 + 2·(−1) = 0;  −1 + 3·3 + 2·2 = 12
    assert guide(cond, uncond, 3.0, no_ref, 2.0).tolist() == [0.0, 12.0]
    assert guide(cond, uncond, 3.0).tolist() == [2.0, 8.0]  # no reference guidance unless asked
    assert guide(cond, None, 3.0, no_ref, 2.0).tolist() == [-1.0, 6.0]  # no CFG: ε_c + r(ε_c − ε_n)
    assert guide(cond, None, 3.0).tolist() == [1.0, 2.0]


@pytest.fixture(scope="module")
def pipes(tiny_backbones):
    return {f: VAPPipeline.from_backbone(str(tiny_backbones[f]), f, blocks="all", device="cpu")
            for f in ("cogvideox", "wan")}


def run(pipe, **kw):
    args = dict(num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="latent")
    args.update(kw)
    return pipe(IMAGE, "a cat turns into a statue", REFERENCE, "a dog turns into a statue", height=32, width=32,
                **args)


def spy(pipe, monkeypatch) -> list[dict]:
    calls = []
    forward = pipe.transformer.forward

    def record(**kw):
        calls.append(kw)
        return forward(**kw)

    monkeypatch.setattr(pipe.transformer, "forward", record)
    return calls


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
def test_negative_prompts_reach_both_streams_and_the_reference_is_kept(pipes, family, monkeypatch):
    pipe = pipes[family]
    calls = spy(pipe, monkeypatch)
    run(pipe, negative_prompt="blurry target", reference_negative_prompt="blurry reference")
    (kw,) = calls  # one forward per step: [unconditional, conditional]
    text = lambda s: torch.from_numpy(pipe.encoder.encode_text([s])).float()[0]  # noqa: E731
    torch.testing.assert_close(kw["encoder_hidden_states"][0], text("blurry target"))
    torch.testing.assert_close(kw["encoder_hidden_states"][1], text("a cat turns into a statue"))
    torch.testing.assert_close(kw["reference_encoder_hidden_states"][0], text("blurry reference"))
    torch.testing.assert_close(kw["reference_encoder_hidden_states"][1], text("a dog turns into a statue"))
    # the unconditional branch keeps the reference video (and its first-frame latent / CLIP embedding)
    ref = kw["reference_hidden_states"]
    assert ref[0].abs().sum() > 0 and torch.equal(ref[0], ref[1])
    if family == "wan":
        img = kw["reference_encoder_hidden_states_image"]
        assert torch.equal(img[0], img[1])


@pytest.mark.parametrize("family, g, dynamic, width", [("cogvideox", 6.0, True, 720), ("wan", 5.0, False, 832)])
def test_defaults_are_the_authors(pipes, family, g, dynamic, width, monkeypatch):
    d = get_family(family).generation
    assert (d.guidance_scale, d.dynamic_cfg, d.height, d.width) == (g, dynamic, 480, width)
    assert d.negative_prompt.startswith(AUTHORS_NEGATIVE) and d.reference_negative_prompt == d.negative_prompt
    # and the pipeline uses them when given nothing: the same as passing them explicitly
    pipe = pipes[family]
    calls = spy(pipe, monkeypatch)
    a = run(pipe).latents
    b = run(pipe, negative_prompt=d.negative_prompt, reference_negative_prompt=d.negative_prompt,
            guidance_scale=g, dynamic_cfg=dynamic).latents
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(calls[0]["encoder_hidden_states"][0], calls[0]["encoder_hidden_states"][1])


def test_dynamic_cfg_is_diffusers_cosine_ramp(pipes):
    # diffusers' CogVideoX pipelines: 1 + g·(1 − cos(π·((n − t)/n)^5))/2 at timestep value t
    for t, n in ((999, 50), (20, 50), (0, 50), (7, 10)):
        ramp = ((n - t) / n) ** 5.0
        assert dynamic_guidance_scale(6.0, torch.tensor(t), n) == pytest.approx(1 + 6.0 * (1 - math.cos(math.pi * ramp)) / 2)
    # the pipeline applies it at each step's timestep: one step with the ramp = one step at that fixed g
    pipe = pipes["cogvideox"]
    pipe.scheduler.set_timesteps(1)
    t = pipe.scheduler.timesteps[0]
    g = 1 + 6.0 * (1 - math.cos(math.pi * ((1 - float(t)) / 1) ** 5.0)) / 2
    ramped = run(pipe, guidance_scale=6.0, dynamic_cfg=True).latents
    fixed = run(pipe, guidance_scale=g, dynamic_cfg=False).latents
    plain = run(pipe, guidance_scale=6.0, dynamic_cfg=False).latents
    torch.testing.assert_close(ramped, fixed, atol=1e-5, rtol=1e-4)
    assert g != pytest.approx(6.0) and not torch.allclose(ramped, plain, atol=1e-5)


@pytest.mark.parametrize("mode", ["joint", "one_way"])
def test_wan_reference_stream_runs_at_t_1(tiny_backbones, mode):
    model = VAPTransformer.from_backbone(str(tiny_backbones["wan"]), "wan", blocks="all", reference_attention=mode)
    kw = forward_kwargs(model, shard_batch("wan"))
    with torch.no_grad():
        default = model(**kw).sample
        at_1 = model(**kw, reference_timestep=torch.tensor(1.0)).sample
        at_0 = model(**kw, reference_timestep=torch.tensor(0.0)).sample
    torch.testing.assert_close(default, at_1, atol=0, rtol=0)
    assert not torch.allclose(default, at_0, atol=1e-6)
