"""Temporally biased 3D RoPE: positions per axis, then cos/sin tables from positions.

The target's latent frames sit at temporal positions 0..T-1. Reference `i` of `m` (laid
contiguously in time) sits at (m - i)·Δ + 0..T-1, so with the default Δ = -T the references
cover -mT..-1, right before the target. Height and width positions are the target's. Text
tokens get no RoPE. Computing the tables from explicit positions (rather than slicing a table
that starts at 0) is what lets positions go negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Positions:
    """Per-axis positions of a token grid (tokens are ordered t-major, then h, then w)."""

    t: torch.Tensor  # [F] temporal positions
    h: torch.Tensor  # [H] height positions
    w: torch.Tensor  # [W] width positions

    @property
    def num_tokens(self) -> int:
        return len(self.t) * len(self.h) * len(self.w)

    def shifted(self, delta: float) -> Positions:
        return Positions(self.t + delta, self.h, self.w)


def reference_positions(target: Positions, num_references: int, delta: float | None) -> Positions:
    """Positions of `num_references` references laid contiguously before the target in time."""
    frames = len(target.t)
    delta = -frames if delta is None else delta
    t = torch.cat([target.t + (num_references - i) * delta for i in range(num_references)])
    return Positions(t, target.h, target.w)


def axis_tables(dims: tuple[int, int, int], pos: Positions, theta: float, freqs_dtype: torch.dtype):
    """cos, sin of shape [tokens, sum(dims)], each axis interleaved as diffusers does for
    CogVideoX and Wan (`get_1d_rotary_pos_embed(..., repeat_interleave_real=True)`)."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    tables = [get_1d_rotary_pos_embed(d, p.to(freqs_dtype), theta, use_real=True, repeat_interleave_real=True,
                                      freqs_dtype=freqs_dtype)
              for d, p in zip(dims, (pos.t, pos.h, pos.w), strict=True)]
    nt, nh, nw = len(pos.t), len(pos.h), len(pos.w)

    def grid(parts):
        a, b, c = parts
        return torch.cat([a[:, None, None, :].expand(nt, nh, nw, -1),
                          b[None, :, None, :].expand(nt, nh, nw, -1),
                          c[None, None, :, :].expand(nt, nh, nw, -1)], dim=-1).reshape(nt * nh * nw, -1)

    return grid([t[0] for t in tables]), grid([t[1] for t in tables])
