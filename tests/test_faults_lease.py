"""The job lease: of two `vap train` of one job exactly one holds it, the other is refused naming
the holder; a crashed holder's lease expires; the holder renews it; local files and S3 (moto)."""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time

import pytest

from vap import lease, storage
from vap.errors import LeaseError


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "runs")
    return request.getfixturevalue("s3_bucket") + "/runs"


def test_a_second_holder_is_refused_naming_the_first(root):
    first = lease.acquire(root, "job-a")
    with pytest.raises(LeaseError, match=r"job job-a is already being trained by .* pid \d+ .*expires in \d+s"):
        lease.acquire(root, "job-a")
    lease.acquire(root, "job-b").release()  # another job is another lease
    first.release()
    assert not storage.exists(lease.lease_uri(root, "job-a"))
    lease.acquire(root, "job-a").release()


def test_an_expired_lease_is_taken_over(root):
    crashed = lease.acquire(root, "job", ttl=0.3)  # never renewed nor released: its holder died
    time.sleep(0.5)
    taker = lease.acquire(root, "job")
    held = json.loads(storage.read_bytes(lease.lease_uri(root, "job")))
    assert held["token"] == taker.token != crashed.token
    crashed.release()  # a late release of the dead holder does not remove the new holder's lease
    assert json.loads(storage.read_bytes(lease.lease_uri(root, "job")))["token"] == taker.token
    with pytest.raises(LeaseError, match="was taken over"):
        crashed.renew()
    taker.release()


def test_the_holder_renews_its_lease(root):
    with lease.hold(root, "job", ttl=0.6):
        time.sleep(1.2)  # two ttls: without renewal the lease would have expired
        with pytest.raises(LeaseError, match="already being trained"):
            lease.acquire(root, "job")
    lease.acquire(root, "job").release()  # released at the end of the block


def test_racing_threads_get_exactly_one_lease(root):
    for round_ in range(3):
        job, won, refused = f"race-{round_}", [], []
        gate = threading.Barrier(4)

        def take(job=job, won=won, refused=refused, gate=gate):
            gate.wait()
            try:
                won.append(lease.acquire(root, job))
            except LeaseError:
                refused.append(1)

        threads = [threading.Thread(target=take) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(won) == 1 and len(refused) == 3


def _take(root: str, gate, results) -> None:
    gate.wait()
    try:
        lease.acquire(root, "job")
        results.put("won")
    except LeaseError:
        results.put("refused")


def test_racing_processes_get_exactly_one_local_lease(tmp_path):
    ctx = mp.get_context("fork")
    gate, results = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_take, args=(str(tmp_path), gate, results)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert sorted(results.get(timeout=5) for _ in procs) == ["refused", "refused", "won"]


def test_a_damaged_lease_record_counts_as_expired(tmp_path):
    uri = lease.lease_uri(str(tmp_path), "job")
    storage.write_bytes(uri, b"{half a rec")
    lease.acquire(str(tmp_path), "job").release()
