"""Attention between the target stream and the reference stream of an expert block.

Each stream has computed its own Q/K/V (its own weights, norms and RoPE); here they meet.
`joint` (the paper): one full, unmasked attention over both streams. `one_way` (ours): the
reference attends only to itself and the target attends to both, so the reference's keys and
values never depend on the noisy target — with a fixed reference timestep they can be computed
once per generation and reused at every denoising step (`ReferenceCache`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MODES = ("joint", "one_way")


def attend(q_t, k_t, v_t, q_r, k_r, v_r, mode: str):
    """Tensors are [B, heads, L, d]. `q_r` is None when the reference's output is not needed (it
    comes from a cache, or this is the last expert block): the target's rows are the same in both
    modes. Returns (target output, reference output or None)."""
    if k_r is None:  # no reference stream: the backbone's own attention
        return F.scaled_dot_product_attention(q_t, k_t, v_t), None
    if mode == "joint" and q_r is not None:
        n_t = q_t.shape[2]
        out = F.scaled_dot_product_attention(torch.cat([q_t, q_r], 2), torch.cat([k_t, k_r], 2),
                                             torch.cat([v_t, v_r], 2))
        return out[:, :, :n_t], out[:, :, n_t:]
    out_t = F.scaled_dot_product_attention(q_t, torch.cat([k_t, k_r], 2), torch.cat([v_t, v_r], 2))
    out_r = None if q_r is None else F.scaled_dot_product_attention(q_r, k_r, v_r)
    return out_t, out_r


class ReferenceCache:
    """The reference stream's keys and values per expert block, filled by the first forward of a
    generation and read by every later one. Only valid in `one_way` mode with a fixed reference
    timestep, for the same reference inputs and batch: the pipeline creates one per call."""

    def __init__(self) -> None:
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.filled = False
        self.batch_size: int | None = None

    def __len__(self) -> int:
        return len(self.kv)
