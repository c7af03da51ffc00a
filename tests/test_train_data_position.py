"""The data position across world-size changes, 2 ranks → 1 → 2 (gloo processes on one node),
read as the trainer reads it: `make_loader` epoch after epoch (`trainer._forever`), rank 0's
`loader.state_dict()` saved mid-epoch, `load_state_dict` in the next world.

The oracle is a fresh, plain `streaming.StreamingDataset` in this process (one rank, same seed
and batch size), iterated for two epochs: MosaicML Streaming's sample order for a fixed seed and
`num_canonical_nodes` does not depend on the number of ranks, and a resume drops the samples the
state counts as seen. So the phases, each step dealt out over the ranks sample by sample,
continue that one order: every sample of an epoch exactly once across both changes, none
skipped, and the next epoch in its own seeded order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port
from streaming import StreamingDataset

from vap import storage
from vap.datasets.build import build_snapshot
from vap.datasets.synth import synthesize
from vap.spec import parse_spec

pytestmark = pytest.mark.slow  # five fresh processes importing torch and Streaming: ≈ 1 min on 2 cores

BATCH, SEED, PAIRS = 2, 5, 12

# One rank of one phase: resume from `state_in` if given, take `batches` batches the way the
# trainer's loop does (across epoch ends), record their pair ids, save rank 0's loader state.
RANK_SCRIPT = r"""
import itertools, json, sys
import torch.distributed as dist
from vap.datasets.loader import make_loader
from vap.training.trainer import _forever

snapshot, cache, out, state_in, state_out, batches = sys.argv[1:]
dist.init_process_group("gloo")  # RANK / WORLD_SIZE / MASTER_* from the environment
rank = dist.get_rank()
loader = make_loader(snapshot, "train", batch_size={batch}, seed={seed}, local_cache=cache)
if state_in:
    loader.load_state_dict(json.load(open(state_in)))
seen = [batch["pair_id"] for batch in itertools.islice(_forever(loader), int(batches))]
if rank == 0:  # what a checkpoint keeps: rank 0's state, in DeepSpeed's client state
    json.dump(loader.state_dict(), open(state_out, "w"))
json.dump(seen, open(f"{{out}}.{{rank}}", "w"))
dist.barrier()
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def snapshot(tiny_backbones, tmp_path_factory) -> str:
    """12 train pairs (3 conditions × 4 clips) in 3 parts, so the shuffle spans shards."""
    src = tmp_path_factory.mktemp("src")
    synthesize(str(src), conditions_per_category=1, clips_per_condition=4, frames=9, fps=8.0, size=32,
               progress=False)
    spec = parse_spec({
        "name": "position", "model": {"family": "cogvideox", "backbone": str(tiny_backbones["cogvideox"])},
        "data": {"source": str(src), "shards": str(tmp_path_factory.mktemp("shards")), "frames": 5, "fps": 8.0,
                 "val_fraction": 0.0, "pairs_per_part": 4},
        "storage": {"uri": "/tmp/unused"}, "registry": {"tracking_uri": "sqlite:////tmp/unused.db"}})
    return build_snapshot(spec, progress=False).uri


def run_phase(name: str, world: int, batches: int, snapshot: str, tmp_path: Path, resume: str = "") -> list[str]:
    """`world` ranks each take `batches` batches; the pair ids in the global order: Streaming
    deals a node's samples out to its ranks one by one, so a step holds, position by position
    in the batch, rank 0's sample, then rank 1's."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT.format(batch=BATCH, seed=SEED))
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
        env.pop("LOCAL_WORLD_SIZE", None)  # one node: the loader fills in the local layout
        procs.append(subprocess.Popen(
            [sys.executable, str(script), snapshot, str(tmp_path / "cache"), str(tmp_path / name), resume,
             str(tmp_path / f"{name}.state.json"), str(batches)], stderr=subprocess.PIPE, text=True, env=env))
    errors = {r: p.communicate(timeout=300)[1][-2000:] for r, p in enumerate(procs)}
    assert all(p.returncode == 0 for p in procs), {r: e for r, e in errors.items() if procs[r].returncode}
    per_rank = [json.loads((tmp_path / f"{name}.{r}").read_text()) for r in range(world)]
    return [pid for step in zip(*per_rank, strict=True) for position in zip(*step, strict=True) for pid in position]


def epoch_orders(snapshot: str, local: Path, epochs: int) -> list[list[str]]:
    """The oracle: Streaming's own dataset, one rank, no resume, iterated `epochs` times."""
    dataset = StreamingDataset(remote=storage.join(snapshot, "train"), local=str(local), shuffle=True,
                               shuffle_seed=SEED, batch_size=BATCH)
    return [[sample["pair_id"] for sample in dataset] for _ in range(epochs)]


def test_two_ranks_to_one_to_two_continue_one_sample_order(snapshot, tmp_path):
    assert "RANK" not in os.environ  # the oracle must run as one rank
    first, second = epoch_orders(snapshot, tmp_path / "oracle", epochs=2)
    assert sorted(first) == sorted(second) and len(set(first)) == PAIRS and first != second

    # 2 ranks take 1 step (4 of the 12 samples), stop as a preempted job does
    two = run_phase("two", 2, 1, snapshot, tmp_path)
    # 1 rank resumes: the other 8 of epoch 0, then 4 of epoch 1, one batch a step
    one = run_phase("one", 1, 6, snapshot, tmp_path, resume=str(tmp_path / "two.state.json"))
    # 2 ranks again: the last 8 of epoch 1, two steps each
    again = run_phase("again", 2, 2, snapshot, tmp_path, resume=str(tmp_path / "one.state.json"))

    assert two + one + again == first + second  # Streaming's one order, continued at each change
    epoch0 = two + one[:8]
    assert len(epoch0) == len(set(epoch0)) == PAIRS  # each sample of the epoch exactly once
