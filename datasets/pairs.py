"""Reference/target pairs among clips that share a condition, with two kinds of held-out split.

- "unseen": whole conditions kept out of training, for zero-shot evaluation (VAP's claim is that
  one model handles conditions it never saw).
- "val": held-out *clips* of the conditions training sees; a val clip is never a train target or
  reference. Rows whose CSV `split` is already val/test stay held out.

Every random draw is seeded from `seed` (and the condition), and clips are sorted by id first:
the pairs depend on the seed and the clips, not on the order the clips come in.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter, defaultdict

from vap.datasets.records import Clip, Pair

log = logging.getLogger(__name__)

HELD_OUT_SPLITS = {"val", "validation", "valid", "test", "eval", "dev"}


def make_pairs(clips: list[Clip], *, seed: int = 0, refs_per_target: int = 1,
               val_fraction: float = 0.1, unseen_conditions: int = 1, candidates: int = 1) -> dict[str, list[Pair]]:
    """Pairs per split: "train", "val" (held-out clips of seen conditions), "unseen" (conditions
    never in train). A target is never its own reference; each target gets up to
    `refs_per_target` distinct references, preferring those its row lists (`Clip.refs`).
    With `candidates` > 1 each pair also holds up to that many candidate references (its own
    reference first, then listed ones, then others of the pool), which the loader draws from
    afresh every epoch, as the authors draw from a clip's same-condition list on every pass.
    Conditions with a single clip cannot be paired and are left out (the report counts them)."""
    if refs_per_target < 1 or candidates < 1:
        raise ValueError("refs_per_target and candidates must be at least 1")
    if not 0 <= val_fraction < 1:
        raise ValueError("val_fraction must be in [0, 1)")
    by_condition: dict[str, list[Clip]] = defaultdict(list)
    for clip in sorted(clips, key=lambda c: c.id):
        by_condition[clip.condition].append(clip)
    pairable = sorted(c for c, members in by_condition.items() if len(members) >= 2)
    unseen = _pick_unseen(pairable, by_condition, unseen_conditions, seed)

    seen = [c for c in pairable if c not in unseen]
    held = _hold_out({c: by_condition[c] for c in seen}, val_fraction, seed)
    out: dict[str, list[Pair]] = {"train": [], "val": [], "unseen": []}
    for condition in pairable:
        members = by_condition[condition]
        rng = random.Random(f"{seed}/{condition}")
        if condition in unseen:
            out["unseen"] += _pairs(members, members, "unseen", refs_per_target, rng, candidates)
            continue
        train = [c for c in members if c.id not in held]
        out["train"] += _pairs(train, train, "train", refs_per_target, rng, candidates)
        # A val target's references may be any other clip of the condition: what is held out is
        # the target clip, which training never sees.
        val = [c for c in members if c.id in held]
        out["val"] += _pairs(val, members, "val", refs_per_target, rng, candidates)
    log.info("pairs: %s; unseen conditions: %s", {k: len(v) for k, v in out.items()}, sorted(unseen))
    return out


def _pick_unseen(pairable: list[str], by_condition: dict[str, list[Clip]], wanted: int, seed: int) -> set[str]:
    """`wanted` conditions, spread over categories, always leaving one condition to train on."""
    n = min(wanted, len(pairable) - 1)
    if n < wanted:
        log.warning("only %d pairable conditions: holding out %d unseen instead of %d", len(pairable), max(n, 0), wanted)
    order = list(pairable)
    random.Random(f"{seed}/unseen").shuffle(order)
    category = {c: by_condition[c][0].category for c in pairable}  # a condition's: its first clip's (by id)
    chosen: list[str] = []
    held = Counter()
    while len(chosen) < n:  # round-robin over categories: the next from one holding out the fewest so far
        rest = [c for c in order if c not in chosen]
        fewest = min(held[category[c]] for c in rest)
        pick = next(c for c in rest if held[category[c]] == fewest)
        chosen.append(pick)
        held[category[pick]] += 1
    return set(chosen)


def _hold_out(by_condition: dict[str, list[Clip]], fraction: float, seed: int) -> set[str]:
    """Ids of val clips: rows marked val/test, topped up to `fraction` of all seen clips, taken
    round-robin over conditions; every condition keeps at least two clips for training."""
    held = {c.id for members in by_condition.values() for c in members if c.split.lower() in HELD_OUT_SPLITS}
    want = math.floor(fraction * sum(map(len, by_condition.values())) + 0.5) - len(held)
    queues = []
    for condition, members in by_condition.items():
        rest = [c.id for c in members if c.id not in held]
        random.Random(f"{seed}/{condition}/val").shuffle(rest)
        queues.append(rest[: max(len(rest) - 2, 0)])
    random.Random(f"{seed}/val").shuffle(queues)
    while want > 0 and any(queues):
        for queue in queues:
            if queue and want > 0:
                held.add(queue.pop())
                want -= 1
    return held


def _pairs(targets: list[Clip], pool: list[Clip], split: str, k: int, rng: random.Random,
           n_candidates: int) -> list[Pair]:
    pairs = []
    for target in targets:
        candidates = [c for c in pool if c.id != target.id]
        listed = [c for c in candidates if c.id in target.refs]
        others = [c for c in candidates if c.id not in target.refs]
        refs = rng.sample(listed, min(k, len(listed)))
        refs += rng.sample(others, min(k - len(refs), len(others)))
        for ref in refs:
            drawn = ()
            if n_candidates > 1:  # its own reference first, then listed clips, then the rest
                more = [c for c in listed if c is not ref], [c for c in others if c is not ref]
                rest = rng.sample(more[0], len(more[0])) + rng.sample(more[1], len(more[1]))
                drawn = (ref, *rest[:n_candidates - 1])
            pairs.append(Pair(target=target, reference=ref, split=split, candidates=drawn))
    return pairs
