"""Ctrl-C during `vap train`: the terminal sends SIGINT to the whole foreground process group
(driver and the Ray processes it started); the MLflow run is closed KILLED, the command exits
130 (128 + SIGINT) and no process of it is left behind. Step metrics are in MLflow as each step
ends, before any checkpoint."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
from test_train_recovery import (
    _spec,
    _train_workers,
    start_vap_train,
    world,  # noqa: F401  (the module's snapshot fixture)
)

from vap.registry import Registry
from vap.training import checkpoint as ckpt

pytestmark = pytest.mark.slow


def test_ctrl_c_closes_the_run_killed_exit_130_no_process_left(world, tmp_path):  # noqa: F811
    root, backbone = world
    db = f"sqlite:///{tmp_path}/mlflow.db"
    # its own session: a process group of its own, as a shell gives a foreground job
    proc = start_vap_train(_spec(root, "interrupted", backbone, db, steps=40, checkpoint_every=40), tmp_path,
                           start_new_session=True)
    job = root / "runs" / "interrupted"
    deadline = time.monotonic() + 300
    # Ray Train's workers start after `vap train` has created the tracking store and the run: only
    # then read the store (a reader racing its creation breaks MLflow's migration)
    while not _train_workers(proc.pid) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    registry = Registry(db, "interrupted-expert")

    def streamed() -> bool:
        run = registry.find_run("interrupted")
        return run is not None and registry.latest_metric(run.info.run_id, "loss") is not None

    while not streamed() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert streamed(), proc.stderr.read() if proc.poll() is not None else "no step metric within 300 s"
    assert not (job.exists() and ckpt.checkpoints(str(job)))  # the metric came before any checkpoint
    descendants = psutil.Process(proc.pid).children(recursive=True)
    assert _train_workers(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    _, alive = psutil.wait_procs(descendants, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    assert registry.find_run("interrupted").info.status == "KILLED"
