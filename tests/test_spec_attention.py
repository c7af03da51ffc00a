"""Where the target and reference streams meet (vap.training.attention.attend), against attention
written out by hand: softmax(q kᵀ / √d + mask) v over an explicit who-sees-whom mask. `joint`
(the paper) lets every token see every token; `one_way` lets the target see both streams and
the reference only itself. In float64 both agree with torch's kernel to rounding (~1e-15)."""

from __future__ import annotations

import math

import pytest
import torch

from vap.training.attention import MODES, ReferenceCache, attend

B, HEADS, N_T, N_R, D = 2, 3, 5, 4, 8  # unequal lengths: a swapped or mis-split stream shows


def by_hand(q, k, v, sees):
    """Attention of queries q over keys/values k, v where `sees[i, j]` says query i may see key j."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~sees, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@pytest.fixture()
def streams():
    g = torch.Generator().manual_seed(0)
    t = [torch.randn(B, HEADS, N_T, D, generator=g, dtype=torch.float64) for _ in range(3)]
    r = [torch.randn(B, HEADS, N_R, D, generator=g, dtype=torch.float64) for _ in range(3)]
    return t, r


def mask(target_sees_reference: bool, reference_sees_target: bool) -> torch.Tensor:
    """Who sees whom over [target tokens | reference tokens]."""
    sees = torch.ones(N_T + N_R, N_T + N_R, dtype=torch.bool)
    sees[:N_T, N_T:] = target_sees_reference
    sees[N_T:, :N_T] = reference_sees_target
    return sees


def joined(t, r):
    return [torch.cat([a, b], 2) for a, b in zip(t, r, strict=True)]


def test_the_modes_are_the_papers_and_ours():
    assert MODES == ("joint", "one_way")


@pytest.mark.parametrize(("mode", "reference_sees_target"), [("joint", True), ("one_way", False)])
def test_each_mode_is_attention_under_its_mask(streams, mode, reference_sees_target):
    t, r = streams
    out_t, out_r = attend(*t, *r, mode)
    want = by_hand(*joined(t, r), mask(True, reference_sees_target))
    assert out_t.shape == t[0].shape and out_r.shape == r[0].shape
    torch.testing.assert_close(out_t, want[:, :, :N_T], rtol=0, atol=1e-12)
    torch.testing.assert_close(out_r, want[:, :, N_T:], rtol=0, atol=1e-12)


def test_in_one_way_the_reference_never_depends_on_the_target(streams):
    t, r = streams
    _, out_r = attend(*t, *r, "one_way")
    _, again = attend(*(x.flip(2) * 3 for x in t), *r, "one_way")  # another target entirely
    torch.testing.assert_close(again, out_r, rtol=0, atol=0)
    _, joint_r = attend(*t, *r, "joint")
    assert not torch.allclose(joint_r, out_r)  # in joint it does: the two modes differ there


@pytest.mark.parametrize("mode", MODES)
def test_without_the_reference_query_the_target_rows_are_the_same_in_both_modes(streams, mode):
    t, r = streams
    out_t, out_r = attend(*t, None, r[1], r[2], mode)
    assert out_r is None
    torch.testing.assert_close(out_t, by_hand(t[0], *joined(t, r)[1:], mask(True, True)[:N_T]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_without_a_reference_stream_it_is_the_backbones_own_attention(streams, mode):
    t, _ = streams
    out_t, out_r = attend(*t, None, None, None, mode)
    assert out_r is None
    torch.testing.assert_close(out_t, by_hand(*t, torch.ones(N_T, N_T, dtype=torch.bool)), rtol=0, atol=1e-12)


def test_a_new_reference_cache_is_empty_and_unfilled():
    cache = ReferenceCache()
    assert (len(cache), cache.kv, cache.filled, cache.batch_size) == (0, {}, False, None)
    cache.kv[3] = (torch.zeros(1), torch.zeros(1))
    assert len(cache) == 1
