"""Temporally biased RoPE: the reference sits at the target's positions shifted by Δ in time
(default −T), at the same height/width positions; the target's own tables are the backbone's."""

from __future__ import annotations

import pytest
import torch
from test_model_helpers import FAMILIES, forward_kwargs, shard_batch

from vap.training.model import VAPTransformer
from vap.training.rope import Positions, axis_tables, reference_positions


def time_columns(model) -> int:
    """Width of the temporal part of a RoPE table row (the first axis in both families)."""
    d = model.config.backbone_config["attention_head_dim"]
    return d // 4 if model.config.family == "cogvideox" else d - 4 * (d // 6)


def test_reference_positions():
    target = Positions(torch.arange(3.0), torch.arange(4.0), torch.arange(5.0))
    one = reference_positions(target, 1, None)
    assert one.t.tolist() == [-3, -2, -1] and torch.equal(one.h, target.h) and torch.equal(one.w, target.w)
    assert reference_positions(target, 1, -7).t.tolist() == [-7, -6, -5]
    assert reference_positions(target, 2, None).t.tolist() == [-6, -5, -4, -3, -2, -1]  # contiguous, −mT..−1


@pytest.mark.parametrize("family", FAMILIES)
def test_target_tables_are_the_backbones(tiny_backbones, family):
    model = VAPTransformer.from_backbone(str(tiny_backbones[family]), family, blocks=[0])
    cfg = model.config.backbone_config
    x = forward_kwargs(model, shard_batch(family))["hidden_states"]
    cos, sin = model.family.rope(cfg, model.family.target_positions(cfg, x.shape))
    if family == "cogvideox":
        from diffusers.models.embeddings import get_3d_rotary_pos_embed
        from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import (
            get_resize_crop_region_for_grid,
        )

        p = cfg["patch_size"]
        grid = (x.shape[3] // p, x.shape[4] // p)
        crops = get_resize_crop_region_for_grid(grid, cfg["sample_width"] // p, cfg["sample_height"] // p)
        want = get_3d_rotary_pos_embed(cfg["attention_head_dim"], crops, grid, x.shape[1])
    else:
        want = model.backbone.rope(x)
    assert torch.equal(cos, want[0]) and torch.equal(sin, want[1])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("delta", [None, -5])
def test_the_reference_stream_gets_shifted_time_and_same_space(tiny_backbones, family, delta):
    model = VAPTransformer.from_backbone(str(tiny_backbones[family]), family, blocks="all", rope_delta=delta)
    seen = []
    embed = model.family.embed

    def spy(mods, video, text, timestep, image, rope):
        seen.append(rope)
        return embed(mods, video, text, timestep, image, rope)

    model.family.embed = spy
    with torch.no_grad():
        model(**forward_kwargs(model, shard_batch(family)))
    (t_cos, t_sin), (r_cos, r_sin) = [(c.reshape(-1, c.shape[-1]), s.reshape(-1, s.shape[-1])) for c, s in seen]
    n = time_columns(model)
    assert torch.equal(r_cos[:, n:], t_cos[:, n:]) and torch.equal(r_sin[:, n:], t_sin[:, n:])  # same h, w

    cfg = model.config.backbone_config
    frames = 3
    shift = -frames if delta is None else delta
    pos = model.family.target_positions(cfg, forward_kwargs(model, shard_batch(family))["hidden_states"].shape)
    want_cos, want_sin = model.family.rope(cfg, pos.shifted(shift))
    want_cos, want_sin = want_cos.reshape(r_cos.shape), want_sin.reshape(r_sin.shape)
    assert torch.equal(r_cos, want_cos) and torch.equal(r_sin, want_sin)
    # the first temporal frequency is 1 (θ^0): its column is cos(t + Δ) frame by frame
    tokens_per_frame = r_cos.shape[0] // frames
    expected = torch.cos(torch.tensor([t + shift for t in range(frames)], dtype=torch.float64))
    torch.testing.assert_close(r_cos[::tokens_per_frame, 0].double(), expected, atol=1e-6, rtol=0)
    assert not torch.equal(r_cos[:, :n], t_cos[:, :n])


@pytest.mark.parametrize("family", FAMILIES)
def test_the_bias_matters(tiny_backbones, family):
    """Δ reaches the attention: another shift changes the prediction."""
    kw = None
    outs = []
    for delta in (None, 0):
        model = VAPTransformer.from_backbone(str(tiny_backbones[family]), family, blocks="all", rope_delta=delta)
        kw = kw or forward_kwargs(model, shard_batch(family))
        with torch.no_grad():
            outs.append(model(**kw).sample)
    assert not torch.allclose(outs[0], outs[1], atol=1e-5)


def test_axis_tables_closed_form():
    """RoPE by hand: axis of size d at position p gets angles p·θ^(-2j/d), j < d/2, each
    repeated twice in a row (interleaved), axes concatenated t, h, w over a t-major grid."""
    theta, dims = 100.0, (2, 4, 4)
    pos = Positions(torch.tensor([-1.0, 2.0]), torch.tensor([0.0, 1.0]), torch.tensor([3.0]))
    cos, sin = axis_tables(dims, pos, theta, torch.float64)

    def angles(d, p):
        freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        return (p.double() * freqs).repeat_interleave(2)

    tokens = [(t, h, w) for t in pos.t for h in pos.h for w in pos.w]
    expected = torch.stack([torch.cat([angles(d, p) for d, p in zip(dims, tok, strict=True)]) for tok in tokens])
    torch.testing.assert_close(cos.double(), expected.cos())
    torch.testing.assert_close(sin.double(), expected.sin())


def test_axis_tables_want_one_size_per_axis():
    pos = Positions(torch.zeros(1), torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError):
        axis_tables((2, 2, 2, 2), pos, 10000.0, torch.float64)
