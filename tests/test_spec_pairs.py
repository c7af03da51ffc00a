"""Pairing, pinned down by numbers the test works out itself: how many clips are held out as val for
a fraction, how unseen conditions spread over categories, what a pair's candidate references are
and in which order, what the seed decides, and the messages a bad setting and a thin source get.
(tests/test_pairs.py has the basic guarantees; this file is what `make mutate` found missing.)"""

from __future__ import annotations

import logging
import math
from collections import Counter

import pytest

from vap.datasets.pairs import make_pairs
from vap.datasets.records import CATEGORIES, Clip


def clip(condition: str, i: int, category: str = "concept", **kw) -> Clip:
    return Clip(id=f"{condition}/clip_{i}", uri=f"/data/{condition}_{i}.mp4", caption=f"{condition} {i}",
                condition=condition, category=category, **kw)


def grid(conditions_per_category: int = 3, per_condition: int = 4) -> list[Clip]:
    return [clip(f"{cat}_{k}", i, cat) for cat in CATEGORIES for k in range(conditions_per_category)
            for i in range(per_condition)]


def said(caplog) -> list[str]:
    """What pairing logged (its logger is the module's: vap.datasets.pairs, or datasets.pairs in
    mutmut's copy)."""
    return [r.getMessage() for r in caplog.records if r.name.endswith("datasets.pairs")]


def unseen_of(splits) -> set[str]:
    return {p.target.condition for p in splits["unseen"]}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"refs_per_target": 0}, "refs_per_target and candidates must be at least 1"),
    ({"candidates": 0}, "refs_per_target and candidates must be at least 1"),
    ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
    ({"val_fraction": -0.1}, r"val_fraction must be in \[0, 1\)"),
])
def test_a_bad_setting_is_named(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        make_pairs(grid(), **kwargs)


def test_defaults_are_seed_0_one_unseen_condition_and_a_lone_reference():
    clips = grid()
    explicit = make_pairs(clips, seed=0, refs_per_target=1, val_fraction=0.1, unseen_conditions=1, candidates=1)
    default = make_pairs(clips)
    assert default == explicit
    assert len(unseen_of(default)) == 1
    assert all(p.candidates == () for ps in default.values() for p in ps)


def test_the_seed_decides_the_unseen_conditions_and_the_val_clips():
    clips = grid()
    unseen = {frozenset(unseen_of(make_pairs(clips, seed=s, unseen_conditions=2, val_fraction=0.0)))
              for s in range(8)}
    val = {frozenset(p.target.id for p in make_pairs(clips, seed=s, unseen_conditions=0, val_fraction=0.2)["val"])
           for s in range(8)}
    # 8 seeds over C(12, 2) = 66 choices of unseen conditions and many more val sets: one value
    # for all seeds means the seed never reached the draw
    assert len(unseen) > 1 and len(val) > 1


@pytest.mark.parametrize("seed", range(4))
def test_unseen_conditions_are_spread_round_robin_over_categories(seed):
    clips = grid(conditions_per_category=3)
    for wanted in range(1, 12):
        per_category = Counter(c.split("_")[0] for c in unseen_of(make_pairs(clips, seed=seed,
                                                                              unseen_conditions=wanted)))
        assert sum(per_category.values()) == wanted
        # round-robin: 8 unseen of 4 categories × 3 conditions is 2 each, never 3 + 1 (a category emptied)
        counts = [per_category[c] for c in CATEGORIES]
        assert max(counts) - min(counts) <= 1, (wanted, per_category)


def test_a_category_with_fewer_conditions_runs_out_and_the_others_go_on():
    clips = [clip(f"concept_{k}", i, "concept") for k in range(5) for i in range(2)] + [clip("style_0", i, "style")
                                                                                       for i in range(2)]
    for seed in range(4):
        unseen = unseen_of(make_pairs(clips, seed=seed, unseen_conditions=3))
        assert "style_0" in unseen and len(unseen) == 3


def test_a_condition_counts_under_its_first_clips_category():
    # mixed labels in one condition (a CSV may label rows differently): its first clip by id decides
    clips = ([clip("mixed", 0, "concept")] + [clip("mixed", i, "style") for i in (1, 2)]
             + [clip("plain", i, "concept") for i in range(2)] + [clip("other", i, "style") for i in range(2)])
    for seed in range(6):
        unseen = unseen_of(make_pairs(clips, seed=seed, unseen_conditions=2))
        assert "other" in unseen and unseen & {"mixed", "plain"} and len(unseen) == 2


def test_too_few_conditions_keep_one_to_train_on_and_say_so(caplog):
    two = [clip(c, i) for c in ("a", "b") for i in range(2)]
    with caplog.at_level(logging.WARNING):
        splits = make_pairs(two, seed=0, unseen_conditions=5)
    assert len(unseen_of(splits)) == 1 and len({p.target.condition for p in splits["train"]}) == 1
    assert said(caplog) == ["only 2 pairable conditions: holding out 1 unseen instead of 5"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        make_pairs(two[:2], seed=0, unseen_conditions=5)
    assert said(caplog) == ["only 1 pairable conditions: holding out 0 unseen instead of 5"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        make_pairs(two, seed=0, unseen_conditions=1)  # exactly enough: no warning
    assert said(caplog) == []


def test_val_holds_the_rounded_fraction_and_every_condition_keeps_two_clips():
    # a, b: 7 clips (5 may go to val, 2 stay); c: 2 clips (none may go). Expected: round half up of
    # fraction × 16 seen clips, capped at the 10 that may go.
    clips = [clip(c, i) for c, n in (("a", 7), ("b", 7), ("c", 2)) for i in range(n)]
    for step in range(20):
        fraction = step / 20
        splits = make_pairs(clips, seed=step, unseen_conditions=0, val_fraction=fraction)
        val = [p.target for p in splits["val"]]
        assert len(val) == min(math.floor(fraction * 16 + 0.5), 10), fraction
        assert not any(c.condition == "c" for c in val)
        kept = Counter(p.target.condition for p in splits["train"])
        assert all(kept[c] >= 2 for c in "abc"), (fraction, kept)


def test_rows_marked_held_out_count_towards_the_fraction():
    clips = [clip("a", i, split="test" if i == 0 else "train") for i in range(10)] + [clip("b", i) for i in range(10)]
    # 0.3 of 20 = 6 val clips: the marked one and 5 more
    val = {p.target.id for p in make_pairs(clips, seed=0, unseen_conditions=0, val_fraction=0.3)["val"]}
    assert len(val) == 6 and "a/clip_0" in val
    # 0.05 of 20 = 1: the marked row alone
    val = {p.target.id for p in make_pairs(clips, seed=0, unseen_conditions=0, val_fraction=0.05)["val"]}
    assert val == {"a/clip_0"}


def test_candidates_are_the_reference_then_listed_clips_then_the_rest():
    listed = ("a/clip_3", "a/clip_5")
    clips = [clip("a", i, refs=listed if i == 0 else ()) for i in range(7)] + [clip("b", i) for i in range(5)]
    for n in (2, 4, 10):
        splits = make_pairs(clips, seed=1, unseen_conditions=1, val_fraction=0.25, candidates=n)
        assert all(splits.values())  # train, val and unseen pairs all carry candidates
        for split, pairs in splits.items():
            for p in pairs:
                members = {c.id for c in clips if c.condition == p.target.condition}
                pool = members if split != "train" else members - held(splits)
                ids = [c.id for c in p.candidates]
                assert ids[0] == p.reference.id and len(set(ids)) == len(ids) == min(n, len(pool) - 1)
                assert p.target.id not in ids and set(ids) <= pool
                if p.target.id == "a/clip_0":  # its listed clips come first (those its split may use)
                    usable = set(listed) & pool
                    assert usable and p.reference.id in usable and set(ids[:len(usable)]) == usable
    assert all(p.candidates == () for ps in make_pairs(clips, seed=1, candidates=1).values() for p in ps)


def held(splits) -> set[str]:
    return {p.target.id for p in splits["val"]}


def test_the_summary_line_counts_each_split(caplog):
    # 2 conditions × 4 clips, one unseen, no val: 4 train and 4 unseen pairs
    clips = [clip(c, i) for c in ("a", "b") for i in range(4)]
    with caplog.at_level(logging.INFO):
        splits = make_pairs(clips, seed=0, val_fraction=0.0, unseen_conditions=1)
    (unseen,) = unseen_of(splits)
    assert said(caplog) == [
        f"pairs: {{'train': 4, 'val': 0, 'unseen': 4}}; unseen conditions: ['{unseen}']"]
