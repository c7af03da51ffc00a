"""The streaming loader: the batch contract, deterministic order, mid-epoch resume, every sample
exactly once across 2 ranks (two gloo processes, resumed in the middle), corrupted shards, S3;
the zero-copy read (identical to Streaming's own decode) and the reused batch memory."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from streaming import StreamingDataset

from vap import storage
from vap.datasets import loader as loader_module
from vap.datasets.build import build_snapshot
from vap.datasets.loader import BatchCollator, load_null_text, make_loader, resolve_snapshot
from vap.datasets.snapshot import draw_reference, verify_snapshot
from vap.datasets.synth import synthesize
from vap.errors import DataError
from vap.spec import parse_spec

BATCH = 2



@pytest.fixture(scope="module")
def snapshot(tiny_backbones, tmp_path_factory) -> str:
    """12 train pairs (3 conditions × 4 clips) in 3 parts, and 4 unseen ones."""
    src = tmp_path_factory.mktemp("src")
    synthesize(str(src), conditions_per_category=1, clips_per_condition=4, frames=9, fps=8.0, size=32, progress=False)
    shards = tmp_path_factory.mktemp("shards")
    spec = parse_spec({
        "name": "t", "model": {"family": "cogvideox", "backbone": str(tiny_backbones["cogvideox"])},
        "data": {"source": str(src), "shards": str(shards), "frames": 5, "fps": 8.0, "val_fraction": 0.0,
                 "pairs_per_part": 4},
        "storage": {"uri": "/tmp/unused"}, "registry": {"tracking_uri": "sqlite:////tmp/unused.db"}})
    return build_snapshot(spec, progress=False).uri


def pair_ids(loader, limit: int | None = None) -> list[str]:
    """Pair ids of the first `limit` batches (all if None); takes no batch beyond them."""
    return [pid for batch in itertools.islice(loader, limit) for pid in batch["pair_id"]]


def test_batches_follow_the_shard_contract(snapshot, tmp_path):
    batch = next(iter(make_loader(snapshot, "train", batch_size=BATCH, seed=0, local_cache=tmp_path)))
    for key in ("pair_id", "condition", "category", "target_caption", "reference_caption"):
        assert isinstance(batch[key], list) and len(batch[key]) == BATCH and isinstance(batch[key][0], str)
    for role in ("target", "reference"):
        latent = batch[f"{role}_latent"]
        assert latent.dtype == torch.float16 and latent.shape == (BATCH, 4, 3, 16, 16)  # [B, C, F, h, w]
        assert batch[f"{role}_image_latent"].shape == (BATCH, 4, 1, 16, 16)
        assert batch[f"{role}_text"].shape == (BATCH, 16, 32)
    for pid in batch["pair_id"]:
        target, reference = pid.split("<-")
        assert target != reference
    assert load_null_text(snapshot).shape == (16, 32)


def test_order_is_deterministic_per_seed(snapshot, tmp_path):
    a = pair_ids(make_loader(snapshot, "train", batch_size=BATCH, seed=7, local_cache=tmp_path))
    b = pair_ids(make_loader(snapshot, "train", batch_size=BATCH, seed=7, local_cache=tmp_path))
    c = pair_ids(make_loader(snapshot, "train", batch_size=BATCH, seed=8, local_cache=tmp_path))
    assert a == b and sorted(a) == sorted(c) and len(set(a)) == 12
    assert a != c


def test_resume_mid_epoch_continues_where_it_stopped(snapshot, tmp_path):
    full = pair_ids(make_loader(snapshot, "train", batch_size=BATCH, seed=1, local_cache=tmp_path))
    first = make_loader(snapshot, "train", batch_size=BATCH, seed=1, local_cache=tmp_path)
    head = pair_ids(first, limit=2)
    state = first.state_dict()
    again = make_loader(snapshot, "train", batch_size=BATCH, seed=1, local_cache=tmp_path)
    again.load_state_dict(json.loads(json.dumps(state)))  # it survives a checkpoint as JSON
    assert head + pair_ids(again) == full


WORKER = r"""
import json, sys
import torch.distributed as dist
from vap.datasets.loader import make_loader

phase, snapshot, cache, out, state_path = sys.argv[1:]
dist.init_process_group("gloo")  # RANK / WORLD_SIZE / MASTER_* from the environment
rank = dist.get_rank()
loader = make_loader(snapshot, "train", batch_size=2, seed=3, local_cache=cache)
if phase == "resume":
    loader.load_state_dict(json.load(open(state_path)))
seen = []
for step, batch in enumerate(loader):
    seen += batch["pair_id"]
    if phase == "first" and step == 0:  # stop after 1 of 3 steps, as a preempted job would
        if rank == 0:
            json.dump(loader.state_dict(), open(state_path, "w"))
        break
json.dump(seen, open(f"{out}.{rank}", "w"))
dist.barrier()
dist.destroy_process_group()
"""


def run_ranks(phase: str, snapshot: str, tmp_path: Path, world: int = 2) -> list[list[str]]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        env.pop("LOCAL_WORLD_SIZE", None)  # as with a bare init_process_group: the loader fills it in
        procs.append(subprocess.Popen([sys.executable, str(script), phase, snapshot, str(tmp_path / "cache"),
                                       str(tmp_path / phase), str(tmp_path / "state.json")], env=env))
    for p in procs:
        assert p.wait(timeout=180) == 0
    return [json.loads((tmp_path / f"{phase}.{r}").read_text()) for r in range(world)]


@pytest.mark.slow  # four fresh Python processes importing torch and streaming: ≈ 1 min on 2 cores
def test_two_ranks_see_every_sample_exactly_once_across_a_resume(snapshot, tmp_path):
    first = run_ranks("first", snapshot, tmp_path)
    rest = run_ranks("resume", snapshot, tmp_path)
    assert [len(x) for x in first] == [BATCH, BATCH] and [len(x) for x in rest] == [2 * BATCH, 2 * BATCH]
    seen = [pid for rank in first + rest for pid in rank]
    assert len(seen) == 12 and len(set(seen)) == 12  # all 12 pairs, none twice
    assert not set(first[0] + rest[0]) & set(first[1] + rest[1])  # the ranks never share a sample


def test_corrupted_shard_is_an_error_naming_it(snapshot, tmp_path):
    copy = tmp_path / "snap"
    shutil.copytree(snapshot, copy)
    shard = copy / "train" / "part-00001" / "shard.00000.mds.zstd"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"shard train/part-00001/shard\.00000\.mds\.zstd is corrupted"):
        verify_snapshot(str(copy))
    loader = make_loader(str(copy), "train", batch_size=BATCH, seed=0, local_cache=tmp_path / "cache", shuffle=False)
    with pytest.raises(DataError, match=r"shard train/part-00001/shard\.00000\.mds\.zstd is corrupted"):
        pair_ids(loader)


def streamings_sample(dataset, i: int) -> dict:
    """Sample `i` as Streaming itself decodes it, its candidate reference drawn for the epoch read."""
    sample = StreamingDataset.get_item(dataset, i)
    return draw_reference(sample, dataset.shuffle_seed, dataset.vap_epoch) if "reference_candidates" in sample else sample


@pytest.mark.parametrize("mapped_shards", [8192, 1])  # 1: every shard change drops and maps again
def test_samples_read_as_streamings_own_decode(snapshot, tmp_path, monkeypatch, mapped_shards):
    monkeypatch.setattr(loader_module, "MAPPED_SHARDS", mapped_shards)
    loader = make_loader(snapshot, "train", batch_size=BATCH, seed=0, local_cache=tmp_path, shuffle=False)
    pair_ids(loader)  # fetches every shard into the cache
    dataset = loader.dataset
    for i in [*range(dataset.num_samples), 0]:
        ours, streamings = dataset.get_item(i), streamings_sample(dataset, i)
        assert ours.keys() == streamings.keys()
        for key, value in streamings.items():
            if isinstance(value, np.ndarray):
                assert ours[key].dtype == value.dtype and np.array_equal(ours[key], value), key
                assert not ours[key].flags.writeable  # a view of the mapped shard file, not a copy
            else:
                assert ours[key] == value
    assert len(dataset._vap_maps) == min(mapped_shards, 3)


def test_batches_are_writable_copies_never_overwritten_while_held(snapshot, tmp_path):
    loader = make_loader(snapshot, "train", batch_size=BATCH, seed=0, local_cache=tmp_path)
    held = list(loader)  # every batch kept: none may share memory with a later one
    expected = {s["pair_id"]: s for s in (streamings_sample(loader.dataset, i) for i in range(12))}
    for batch in held:
        for row, pid in enumerate(batch["pair_id"]):
            for role in ("target", "reference"):
                assert np.array_equal(batch[f"{role}_latent"][row].numpy(), expected[pid][f"{role}_latent"])
    held[0]["target_latent"].add_(1)  # writable; the shards are not: a new epoch reads them unchanged
    first = pair_ids(loader, limit=1)[0]
    again = next(b for b in loader if first in b["pair_id"])
    row = again["pair_id"].index(first)
    assert np.array_equal(again["target_latent"][row].numpy(), expected[first]["target_latent"])

    # Released batches give their memory to later ones: two buffers alternate (the batch being
    # built and the one the loop still holds), not one fresh allocation per batch.
    addresses = {batch["target_latent"].data_ptr() for _ in range(2) for batch in loader}
    assert len(addresses) <= 2


def test_collator_refuses_samples_of_different_shapes():
    a = {"pair_id": "a", "x": np.zeros((2, 3), np.float16)}
    b = {"pair_id": "b", "x": np.zeros((1, 3), np.float16)}  # would broadcast into a [2, 3] row
    with pytest.raises(ValueError, match="cannot batch 'x'"):
        BatchCollator()([a, b])
    batch = BatchCollator()([a, {**b, "x": np.ones((2, 3), np.float16)}])
    assert batch["pair_id"] == ["a", "b"] and batch["x"].shape == (2, 2, 3) and batch["x"][1].sum() == 6


def test_damaged_cached_shard_is_an_error_naming_it(snapshot, tmp_path):
    pair_ids(make_loader(snapshot, "train", batch_size=BATCH, seed=0, local_cache=tmp_path))
    cached = next(tmp_path.rglob("part-00001/shard.00000.mds"))
    cached.write_bytes(cached.read_bytes()[: cached.stat().st_size // 2])  # e.g. a full disk, a crash
    loader = make_loader(snapshot, "train", batch_size=BATCH, seed=0, local_cache=tmp_path)
    with pytest.raises(DataError, match=r"shard train/part-00001/shard\.00000\.mds is damaged in the local cache"):
        pair_ids(loader)


def test_resolve_snapshot(snapshot, tmp_path):
    shards = str(Path(snapshot).parent)
    assert resolve_snapshot(shards, "latest") == snapshot
    assert resolve_snapshot(shards, Path(snapshot).name) == snapshot
    with pytest.raises(DataError, match="no snapshot built yet .*run `vap data build`"):
        resolve_snapshot(str(tmp_path), "latest")
    with pytest.raises(DataError, match="'0123' does not exist"):
        resolve_snapshot(shards, "0123")
    with pytest.raises(DataError, match="split 'val' has no pairs"):
        make_loader(snapshot, "val", batch_size=1, seed=0, local_cache=tmp_path)


def test_loads_from_s3(snapshot, s3_bucket, tmp_path):
    remote = f"{s3_bucket}/vap-data/{Path(snapshot).name}"
    storage.upload_dir(snapshot, remote)
    ids = pair_ids(make_loader(remote, "train", batch_size=BATCH, seed=0, local_cache=tmp_path))
    assert len(ids) == 12 and len(set(ids)) == 12


def test_unreachable_s3_endpoint_names_it(monkeypatch, tmp_path):
    from vap.errors import StorageError

    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there once closed
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with pytest.raises(StorageError, match=f"cannot reach S3 endpoint {url}"):
        resolve_snapshot("s3://vap-data/shards", "latest")
    with pytest.raises(StorageError, match=f"cannot reach S3 endpoint {url}"):
        make_loader("s3://vap-data/shards/0123", "train", batch_size=1, seed=0, local_cache=tmp_path)


# A job of two ranks and a one-rank job open their loaders at once on one node. Streaming finds a
# dataset's shared-memory prefix by scanning /dev/shm for a free number; slowed here so that the
# two jobs' scans overlap (both find the same number: FileExistsError), and the job's second rank
# arrives after the other job has registered (its own scan would find another number than its
# leader's), as happens when jobs start together on a busy node.
RACER = r"""
import os, sys, time
from pathlib import Path
import torch.distributed as dist
import streaming.base.shared.prefix as prefix
from streaming.base.constant import SHM_TO_CLEAN
from vap.datasets.loader import make_loader

SLOW = 0.3
scan = prefix._check_and_find_retrying
def slow_scan(*args, **kwargs):
    found = scan(*args, **kwargs)
    time.sleep(SLOW)
    return found
prefix._check_and_find_retrying = slow_scan
snapshot, cache, name = sys.argv[1:]
if "WORLD_SIZE" in os.environ:
    dist.init_process_group("gloo")
go = Path(cache).parent / "go"
Path(f"{cache}.{name}.up").touch()
while not go.exists():
    time.sleep(0.01)
if os.environ.get("RANK") == "1":
    time.sleep(len(SHM_TO_CLEAN) * SLOW + 0.5)  # after the one-rank job has registered its prefix
try:
    loader = make_loader(snapshot, "train", batch_size=2, seed=0, local_cache=cache)
    Path(f"{cache}.{name}.prefix").write_text(str(loader.dataset._shm_prefix_int))
    next(iter(loader))
finally:
    Path(f"{cache}.{name}.ready").touch()  # a racer that failed must not keep the others waiting
while len(list(go.parent.glob("*.ready"))) < 3:  # all alive at once: each job its own memory
    time.sleep(0.01)
if dist.is_initialized():
    dist.barrier()
    dist.destroy_process_group()
"""


@pytest.mark.slow  # three Python processes importing torch and streaming: ≈ 30 s on 2 cores
def test_two_jobs_opening_loaders_at_once_on_one_node_both_start(snapshot, tmp_path):
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    job = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    envs = {"job0": {**base, **job, "RANK": "0"}, "job1": {**base, **job, "RANK": "1"}, "solo": base}
    caches = {"job0": "job", "job1": "job", "solo": "solo"}  # the job's ranks share one node cache
    procs = {name: subprocess.Popen([sys.executable, str(script), snapshot, str(tmp_path / caches[name]), name],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, env in envs.items()}
    while len(list(tmp_path.glob("*.up"))) < 3 and all(p.poll() is None for p in procs.values()):
        time.sleep(0.05)  # all imported: their scans start together
    (tmp_path / "go").touch()
    outs = {name: p.communicate(timeout=300) for name, p in procs.items()}
    last_lines = {n: (err.strip().splitlines() or [""])[-1][:300] for n, (_, err) in outs.items()}
    assert all(p.returncode == 0 for p in procs.values()), last_lines
    prefix = {name: (tmp_path / f"{caches[name]}.{name}.prefix").read_text() for name in procs}
    assert prefix["job0"] == prefix["job1"] != prefix["solo"]
