"""Committed checkpoints in object storage behind a fault-injecting proxy (5xx, stalls past the
read timeout, connection resets): transient faults are retried with backoff; a checkpoint whose
upload failed never looks committed and never is restored; earlier checkpoints survive."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from s3_faults import S3FaultProxy

from vap import storage
from vap.errors import StorageError
from vap.training import checkpoint as ckpt


@pytest.fixture()
def proxy(s3_server, monkeypatch):
    with S3FaultProxy(s3_server, stall_seconds=7) as p:  # botocore's read_timeout is 60 s: see fast_client
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
        monkeypatch.setenv("S3_ENDPOINT_URL", p.url)
        monkeypatch.setattr(ckpt, "time", _NoSleep())  # backoff without waiting
        yield p


class _NoSleep:
    def __init__(self):
        import time

        self._time = time

    def sleep(self, seconds):
        pass

    def __getattr__(self, name):
        return getattr(self._time, name)


@pytest.fixture()
def fast_client(monkeypatch):
    """Clients with a 2 s read timeout, so a stalled response counts as a timeout quickly."""
    import boto3
    from botocore.config import Config

    cfg = Config(connect_timeout=2, read_timeout=2, retries={"max_attempts": 2, "mode": "standard"})
    monkeypatch.setattr(storage, "s3_client", lambda: boto3.client("s3", endpoint_url=storage.endpoint_url(),
                                                                   config=cfg))


def rank_folder(tmp: Path, step: int, rank: int, world: int = 2) -> Path:
    """What one rank's `checkpoint.save` leaves locally: its files plus its manifest."""
    folder = tmp / f"rank{rank}-step{step}"
    (folder / "vap").mkdir(parents=True)
    (folder / "vap" / f"zero_pp_rank_{rank}_optim_states.pt").write_bytes(bytes([rank, step]) * 5000)
    if rank == 0:
        (folder / ckpt.META).write_text(json.dumps({"step": step}))
    ckpt.write_manifest(folder, step=step, rank=rank, world=world)
    return folder


def save_committed(tmp: Path, root: str, step: int) -> str:
    uri = storage.join(root, ckpt.step_dir(step))
    for rank in range(2):
        ckpt.upload(rank_folder(tmp, step, rank), uri)
    ckpt.commit(uri, 2)
    return uri


def test_transient_faults_during_upload_and_restore_are_retried(proxy, fast_client, s3_bucket, tmp_path):
    root = f"{s3_bucket}/job"
    proxy.fail("PUT", r"zero_pp_rank_1", "503", times=3)    # outlives botocore's own 2 attempts
    proxy.fail("PUT", r"rank-0\.json", "reset", times=2)
    proxy.fail("PUT", r"COMMITTED", "timeout", times=2)
    uri = save_committed(tmp_path, root, 2)
    assert {k for _, _, k in proxy.injected} == {"503", "reset", "timeout"}
    assert ckpt.latest_committed(root) == (2, uri)

    proxy.fail("GET", r"zero_pp_rank_0", "reset", times=3)
    proxy.fail("GET", r"rank-1\.json", "500", times=3)
    local = ckpt.fetch(uri, tmp_path / "restored")
    want = rank_folder(tmp_path / "again", 2, 1) / "vap" / "zero_pp_rank_1_optim_states.pt"
    got = local / "vap" / "zero_pp_rank_1_optim_states.pt"
    assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(want.read_bytes()).digest()


def test_a_failed_upload_never_looks_committed_and_earlier_ones_survive(proxy, fast_client, s3_bucket, tmp_path):
    root = f"{s3_bucket}/job"
    first = save_committed(tmp_path, root, 2)
    # step 4: rank 1's upload dies for good (the worker was killed, or the store stayed down)
    uri = storage.join(root, ckpt.step_dir(4))
    ckpt.upload(rank_folder(tmp_path, 4, 0), uri)
    proxy.fail("PUT", r"step-00000004/vap/zero_pp_rank_1", "503", times=-1)
    with pytest.raises(StorageError, match="step-00000004"):
        ckpt.upload(rank_folder(tmp_path, 4, 1), uri)
    with pytest.raises(StorageError, match="rank 1's manifest is missing; the checkpoint is not committed"):
        ckpt.commit(uri, 2)
    assert ckpt.latest_committed(root) == (2, first)  # the partial step 4 is never chosen
    with pytest.raises(StorageError, match="not a committed checkpoint"):
        ckpt.fetch(uri, tmp_path / "partial")
    proxy.clear()
    # the next good commit removes the interrupted folder; keep-last-N keeps committed ones
    save_committed(tmp_path, root, 6)
    ckpt.prune(root, keep=2)
    assert [(s, ok) for s, _, ok in ckpt.checkpoints(root)] == [(2, True), (6, True)]
    save_committed(tmp_path, root, 8)
    ckpt.prune(root, keep=2)
    assert [(s, ok) for s, _, ok in ckpt.checkpoints(root)] == [(6, True), (8, True)]


def test_a_manifest_listing_a_file_that_never_arrived_is_not_committed(s3_bucket, tmp_path):
    uri = f"{s3_bucket}/job/{ckpt.step_dir(2)}"
    folder = rank_folder(tmp_path, 2, 0, world=1)
    (folder / "vap" / "late.pt").write_bytes(b"x")
    ckpt.write_manifest(folder, step=2, rank=0, world=1)
    (folder / "vap" / "late.pt").unlink()  # listed, but the upload never carried it
    ckpt.upload(folder, uri)
    with pytest.raises(StorageError, match=r"1 file\(s\) of rank 0 missing \(e\.g\. vap/late\.pt\)"):
        ckpt.commit(uri, 1)
    assert ckpt.latest_committed(f"{s3_bucket}/job") is None


def test_a_damaged_file_is_refused_on_restore(tmp_path):
    root = str(tmp_path / "runs" / "job")
    uri = save_committed(tmp_path, root, 2)
    victim = Path(uri) / "vap" / "zero_pp_rank_1_optim_states.pt"
    victim.write_bytes(b"\0" + victim.read_bytes()[1:])
    with pytest.raises(StorageError, match="zero_pp_rank_1_optim_states.pt does not match the checkpoint's manifest"):
        ckpt.fetch(uri, tmp_path / "restored")
