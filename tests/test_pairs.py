"""Pairing: same condition, never a clip with itself, deterministic for a seed, and held-out
splits by clip (val) and by unseen condition (zero-shot)."""

from __future__ import annotations

import random

import pytest

from vap.datasets.pairs import make_pairs
from vap.datasets.records import CATEGORIES, Clip


def _clips(conditions_per_category: int = 3, per_condition: int = 6) -> list[Clip]:
    return [
        Clip(id=f"{cat}_{k}/clip_{i}", uri=f"/data/{cat}_{k}_{i}.mp4", caption=f"clip {i}",
             condition=f"{cat}_{k}", category=cat)
        for cat in CATEGORIES for k in range(conditions_per_category) for i in range(per_condition)
    ]


def _ids(pairs) -> list[tuple[str, str, str]]:
    return [(p.split, p.target.id, p.reference.id) for p in pairs]


def test_pairs_share_a_condition_and_never_pair_a_clip_with_itself():
    splits = make_pairs(_clips(), seed=0, refs_per_target=3, val_fraction=0.2, unseen_conditions=2)
    for split, pairs in splits.items():
        assert pairs, split
        for p in pairs:
            assert p.target.condition == p.reference.condition and p.target.id != p.reference.id
            assert p.split == split
        per_target: dict[str, list[str]] = {}
        for p in pairs:
            per_target.setdefault(p.target.id, []).append(p.reference.id)
        assert all(len(refs) == 3 == len(set(refs)) for refs in per_target.values())


def test_held_out_clips_and_unseen_conditions_never_reach_training():
    clips = _clips()
    splits = make_pairs(clips, seed=3, val_fraction=0.25, unseen_conditions=4)
    train_ids = {c.id for p in splits["train"] for c in (p.target, p.reference)}
    train_conditions = {p.target.condition for p in splits["train"]}
    val_targets = {p.target.id for p in splits["val"]}
    unseen = {p.target.condition for p in splits["unseen"]}

    assert not val_targets & train_ids
    assert {p.target.condition for p in splits["val"]} <= train_conditions
    assert len(unseen) == 4 and not unseen & train_conditions
    # Four unseen conditions over four categories: one from each, so every category keeps training data.
    assert sorted(c.split("_")[0] for c in unseen) == sorted(CATEGORIES)
    seen_clips = [c for c in clips if c.condition not in unseen]
    assert len(val_targets) == round(0.25 * len(seen_clips))
    # Every clip of a seen condition is a target exactly once (refs_per_target=1).
    targets = [p.target.id for s in ("train", "val") for p in splits[s]]
    assert sorted(targets) == sorted(c.id for c in seen_clips)
    # Each condition keeps at least two clips to train on.
    for condition in train_conditions:
        assert len({p.target.id for p in splits["train"] if p.target.condition == condition}) >= 2


def test_deterministic_for_a_seed_whatever_the_order_of_the_clips():
    clips = _clips()
    shuffled = list(clips)
    random.Random(7).shuffle(shuffled)
    kwargs = {"refs_per_target": 2, "val_fraction": 0.2, "unseen_conditions": 2}
    a = make_pairs(clips, seed=11, **kwargs)
    b = make_pairs(shuffled, seed=11, **kwargs)
    c = make_pairs(clips, seed=12, **kwargs)
    assert {s: _ids(p) for s, p in a.items()} == {s: _ids(p) for s, p in b.items()}
    assert {s: _ids(p) for s, p in a.items()} != {s: _ids(p) for s, p in c.items()}


def test_listed_references_are_preferred_and_marked_splits_stay_held_out():
    clips = _clips(conditions_per_category=1, per_condition=5)
    first = clips[0]
    clips[0] = Clip(**{**first.__dict__, "refs": ("concept_0/clip_4",)})
    clips[1] = Clip(**{**clips[1].__dict__, "split": "test"})
    splits = make_pairs(clips, seed=0, val_fraction=0.0, unseen_conditions=0)
    refs_of_first = [p.reference.id for p in splits["train"] if p.target.id == first.id]
    assert refs_of_first == ["concept_0/clip_4"]
    assert [p.target.id for p in splits["val"]] == ["concept_0/clip_1"]
    assert "concept_0/clip_1" not in {c.id for p in splits["train"] for c in (p.target, p.reference)}
    assert splits["unseen"] == []


def test_conditions_too_small_to_pair_and_too_few_conditions_for_unseen():
    clips = _clips(conditions_per_category=1, per_condition=2)[:3]  # concept_0 x2, style_0 x1
    splits = make_pairs(clips, seed=0, unseen_conditions=5)
    # style_0 has one clip: it cannot be paired. concept_0 must stay in training.
    assert {p.target.condition for s in splits.values() for p in s} == {"concept_0"}
    assert splits["unseen"] == [] and len(splits["train"]) == 2
    assert make_pairs([], seed=0) == {"train": [], "val": [], "unseen": []}


@pytest.mark.parametrize("kwargs", [{"refs_per_target": 0}, {"val_fraction": 1.0}, {"val_fraction": -0.1}])
def test_rejects_impossible_settings(kwargs):
    with pytest.raises(ValueError):
        make_pairs(_clips(), **kwargs)
