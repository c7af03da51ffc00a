"""A worker SIGKILLed in the middle of a checkpoint upload, at trainer level, against a real local
Ray cluster, DeepSpeed ZeRO-3 on 2 ranks and S3 (moto) behind the fault proxy: the half-uploaded
checkpoint is never restored — the restarted workers resume from the committed one before it
(their restore's reads answered with 503s and connection resets past botocore's own retries,
retried by the checkpoint's backoff), the run ends bitwise equal to an uninterrupted one, and
only committed checkpoints are left. A store
that refuses every write of a checkpoint stops the run with one StorageError line, the run
FAILED, the checkpoint before it committed and whole."""

from __future__ import annotations

import signal
import time
import urllib.parse
from pathlib import Path

import pytest
from s3_faults import S3FaultProxy
from test_train_recovery import (
    _expert_bytes,
    _spec,
    _train_workers,
    train_beside,
    world,  # noqa: F401  (the module's snapshot fixture)
)

from vap import storage
from vap.registry import Registry
from vap.training import checkpoint as ckpt

pytestmark = pytest.mark.slow

STEPS, EVERY = 4, 2
STALLED = ckpt.step_dir(STEPS)  # the checkpoint whose upload the kill interrupts
RESTORED = ckpt.step_dir(EVERY)  # the committed one the restarted workers restore
# Faults on the restore's reads, each served 5 times: botocore makes 3 attempts a request, so
# of 2 ranks' downloads at least one gives up and `ckpt.retrying` retries the whole download.
RESTORE_FAULTS = ((rf"/{RESTORED}/{ckpt.TAG}/.*optim_states", "503"), (rf"prefix=[^&]*/{RESTORED}/", "reset"))


def _worker_log_lines(needle: str) -> list[str]:
    """Lines of this Ray session's worker logs holding `needle` (the workers log to files: the
    session's cluster runs with log_to_driver=False)."""
    import ray._private.worker

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    return [line for f in sorted(logs.glob("worker-*")) for line in f.read_text(errors="replace").splitlines()
            if needle in line]


def test_a_worker_killed_mid_upload_never_restores_the_partial_checkpoint(
        ray_cluster, world, s3_server, s3_bucket, monkeypatch):  # noqa: F811
    from vap.training.trainer import job_root, train

    root, backbone = world
    db = f"sqlite:///{root}/mlflow-upload.db"
    clean = _spec(root, "upload-clean", backbone, db, steps=STEPS, checkpoint_every=EVERY)
    # the uninterrupted run also carries MLflow's system metrics, sampled every second by rank 0
    clean = clean.model_copy(update={"registry": clean.registry.model_copy(update={"system_metrics_interval": 1})})
    clean = train(clean, progress=False)
    cpu = Registry(db, "upload-clean-expert").metric_history(clean.run_id, "system/cpu_utilization_percentage")
    assert cpu and all(0 <= v <= 100 for _, v in cpu), cpu

    spec = _spec(root, "upload-killed", backbone, db, steps=STEPS, checkpoint_every=EVERY, max_failures=1)
    spec = spec.model_copy(update={"storage": spec.storage.model_copy(update={"uri": f"{s3_bucket}/runs"})})
    job = job_root(spec)
    seen: dict = {}
    with S3FaultProxy(s3_server, stall_seconds=30) as proxy:
        # the workers get the endpoint from the driver's environment (trainer.WORKER_ENV)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("S3_ENDPOINT_URL", proxy.url)
        # rank 1's manifest of the last checkpoint hangs: its other files are stored, no marker yet
        proxy.fail("PUT", rf"/{STALLED}/{ckpt.MANIFEST_DIR}/rank-1\.json", "timeout")

        def killer(done):
            while not done.is_set() and not proxy.injected:
                time.sleep(0.05)
            workers = _train_workers()
            if proxy.injected and workers:
                seen["stored"] = set(storage.list_files(storage.join(job, STALLED)))
                seen["committed"] = [s for s, _, ok in ckpt.checkpoints(job) if ok]
                for path, kind in RESTORE_FAULTS:
                    proxy.fail("GET", path, kind, times=5)
                workers[0].send_signal(signal.SIGKILL)

        result = train_beside(spec, killer)

    assert seen, "no worker was killed during the upload"
    # at the kill the interrupted checkpoint was in storage, partly, and not committed
    assert seen["committed"] == [EVERY]
    assert seen["stored"] and ckpt.COMMITTED not in seen["stored"]
    assert f"{ckpt.MANIFEST_DIR}/rank-1.json" not in seen["stored"]
    # the restore met every fault, and retried: its warnings name the download and the checkpoint
    served = {kind for _, path, kind in proxy.injected if RESTORED in urllib.parse.unquote(path)}
    assert served == {"503", "reset"}, proxy.injected
    retries = _worker_log_lines(f"download of {job}/{RESTORED} failed")
    assert retries and all("retrying in" in line for line in retries), retries
    # restored from step 2, not the partial step 4: the same weights as the run never killed
    assert _expert_bytes(result.checkpoint_uri) == _expert_bytes(clean.checkpoint_uri)
    registry = Registry(db, "upload-killed-expert")
    assert sorted(s for s, _ in registry.metric_history(result.run_id, "loss")) == list(range(1, STEPS + 1))
    assert [(s, ok) for s, _, ok in ckpt.checkpoints(job)] == [(EVERY, True), (STEPS, True)]


def test_an_upload_that_keeps_failing_stops_the_run_with_one_line(
        ray_cluster, world, s3_server, s3_bucket, monkeypatch, tmp_path):  # noqa: F811
    from vap.errors import StorageError
    from vap.training.trainer import job_root, train

    root, backbone = world
    db = f"sqlite:///{root}/mlflow-upload-fails.db"
    spec = _spec(root, "upload-fails", backbone, db, steps=STEPS, checkpoint_every=EVERY, max_failures=1)
    spec = spec.model_copy(update={"storage": spec.storage.model_copy(update={"uri": f"{s3_bucket}/runs"})})
    job = job_root(spec)
    with S3FaultProxy(s3_server) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("S3_ENDPOINT_URL", proxy.url)
        proxy.fail("PUT", rf"/{STALLED}/", "503", times=-1)  # the store refuses every write of the last checkpoint
        with pytest.raises(StorageError) as err:
            train(spec, progress=False)
        assert proxy.injected
    line = str(err.value)
    assert "\n" not in line and STALLED in line, line
    # the checkpoint before it is committed and whole: it passes every manifest check on download
    assert [(s, ok) for s, _, ok in ckpt.checkpoints(job) if ok] == [(EVERY, True)]
    ckpt.fetch(ckpt.latest_committed(job)[1], tmp_path / "restored")
    assert Registry(db, "upload-fails-expert").find_run("upload-fails").info.status == "FAILED"
