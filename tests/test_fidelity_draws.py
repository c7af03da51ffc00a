"""A fresh reference per epoch from each pair's stored candidates, the same again on resume."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vap.datasets.build import build_snapshot
from vap.datasets.loader import make_loader
from vap.datasets.pairs import make_pairs
from vap.datasets.records import Clip
from vap.datasets.synth import synthesize
from vap.spec import parse_spec

BATCH = 2


@pytest.fixture(scope="module")
def snapshot(tiny_backbones, tmp_path_factory) -> str:
    """2 conditions × 4 clips: 8 train pairs, each with 3 candidate references."""
    src = tmp_path_factory.mktemp("src")
    synthesize(str(src), conditions_per_category=1, clips_per_condition=4, frames=9, fps=8.0, size=32, progress=False)
    spec = parse_spec({
        "name": "t", "model": {"family": "cogvideox", "backbone": str(tiny_backbones["cogvideox"])},
        "data": {"source": str(src), "shards": str(tmp_path_factory.mktemp("shards")), "frames": 5, "fps": 8.0,
                 "val_fraction": 0.0, "unseen_conditions": 2, "reference_candidates": 3, "pairs_per_part": 4},
        "storage": {"uri": "/tmp/unused"}, "registry": {"tracking_uri": "sqlite:////tmp/unused.db"}})
    return build_snapshot(spec, progress=False).uri


def epoch_refs(loader, batches: int | None = None) -> dict[str, tuple[str, bytes]]:
    """pair id → (reference caption, reference latent bytes) for one pass (or its first batches)."""
    out = {}
    for batch in itertools.islice(loader, batches):  # islice: no batch pulled beyond those kept
        for row, pid in enumerate(batch["pair_id"]):
            out[pid] = (batch["reference_caption"][row], batch["reference_latent"][row].numpy().tobytes())
    return out


def test_candidates_hold_the_reference_first_then_others_of_the_condition():
    clips = [Clip(f"c{i}", f"c{i}.mp4", f"cap {i}", "melt", "concept", refs=("c1",) if i == 0 else ())
             for i in range(5)]
    pairs = make_pairs(clips, seed=0, unseen_conditions=0, val_fraction=0.0, candidates=3)["train"]
    for p in pairs:
        refs = p.references
        assert refs[0] is p.reference and len(refs) == 3 and len({c.id for c in refs}) == 3
        assert p.target.id not in {c.id for c in refs} and {c.condition for c in refs} == {"melt"}
    c0 = next(p for p in pairs if p.target.id == "c0")
    assert c0.reference.id == "c1"  # the listed reference is preferred
    assert all(p.candidates == () for p in make_pairs(clips, seed=0, unseen_conditions=0, val_fraction=0.0)["train"])


def test_reference_draws_differ_across_epochs_and_repeat_on_resume(snapshot, tmp_path):
    loader = make_loader(snapshot, "unseen", batch_size=BATCH, seed=5, local_cache=tmp_path / "a")
    epochs = [epoch_refs(loader) for _ in range(3)]
    assert all(len(e) == 8 for e in epochs)
    # every pair draws among its own 3 candidates; the draws change from epoch to epoch
    per_pair = {pid: {e[pid] for e in epochs} for pid in epochs[0]}
    assert sum(len(v) > 1 for v in per_pair.values()) >= 4
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]

    # the same seed and epoch draw the same references: a fresh loader ...
    again = make_loader(snapshot, "unseen", batch_size=BATCH, seed=5, local_cache=tmp_path / "b")
    assert epoch_refs(again) == epochs[0] and epoch_refs(again) == epochs[1]
    # ... and one resumed mid-epoch from a state_dict
    first = make_loader(snapshot, "unseen", batch_size=BATCH, seed=5, local_cache=tmp_path / "c")
    epoch_refs(first)  # epoch 0
    seen = epoch_refs(first, batches=2)  # half of epoch 1
    state = first.state_dict()
    resumed = make_loader(snapshot, "unseen", batch_size=BATCH, seed=5, local_cache=tmp_path / "d")
    resumed.load_state_dict(state)
    rest = epoch_refs(resumed)
    assert set(seen) | set(rest) == set(epochs[1]) and not set(seen) & set(rest)
    assert {**seen, **rest} == epochs[1]
    # another seed, other draws
    other = make_loader(snapshot, "unseen", batch_size=BATCH, seed=6, local_cache=tmp_path / "e")
    assert epoch_refs(other) != epochs[0] or epoch_refs(other) != epochs[1]


def test_drawn_reference_is_a_whole_candidate(snapshot, tmp_path):
    """Latent, first-frame latent, caption embedding and caption all come from the same candidate."""
    loader = make_loader(snapshot, "unseen", batch_size=BATCH, seed=0, local_cache=tmp_path)
    targets = {}
    for _ in range(3):
        for batch in loader:
            for row in range(len(batch["pair_id"])):
                targets[batch["target_caption"][row]] = batch["target_latent"][row].numpy().tobytes()
    # a reference drawn for one pair is some clip's own encoding: its latent is that clip's as a target
    for _ in range(2):
        for batch in loader:
            for row in range(len(batch["pair_id"])):
                cap = batch["reference_caption"][row]
                assert targets[cap] == batch["reference_latent"][row].numpy().tobytes()
    assert np.isfinite(batch["reference_text"].float().numpy()).all()
