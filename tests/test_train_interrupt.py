"""Ctrl-C during `vap train`: the terminal sends SIGINT to the whole foreground process group
(driver and the Ray processes it started); the MLflow run is closed KILLED, the command exits
130 (128 + SIGINT) and no process of it is left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import REPO
from test_train_recovery import (
    _commits,
    _spec,
    world,  # noqa: F401  (the module's snapshot fixture)
)

from vap.registry import Registry

pytestmark = pytest.mark.slow


def test_ctrl_c_closes_the_run_killed_exit_130_no_process_left(world, tmp_path):  # noqa: F811
    root, backbone = world
    db = f"sqlite:///{tmp_path}/mlflow.db"
    spec = _spec(root, "interrupted", backbone, db, steps=40, checkpoint_every=2)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(json.loads(spec.model_dump_json())))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # its own session: a process group of its own, as a shell gives a foreground job
    proc = subprocess.Popen([str(REPO / ".venv/bin/vap"), "train", "-c", str(path)], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job = Path(root / "runs" / "interrupted")
    deadline = time.monotonic() + 300
    while not (job.exists() and _commits(str(job))) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    descendants = psutil.Process(proc.pid).children(recursive=True)
    assert any("RayTrainWorker" in " ".join(p.cmdline()) for p in descendants if p.is_running())
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    _, alive = psutil.wait_procs(descendants, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    assert Registry(db, "interrupted-expert").find_run("interrupted").info.status == "KILLED"
