"""Training that survives failures, against a real local Ray cluster and DeepSpeed ZeRO-3 on 2
ranks: a worker SIGKILLed (twice) is restarted from the latest committed checkpoint within the
same `train()` call and the run ends bitwise equal to an uninterrupted one, each step logged
once; a worker's DataError is the user's one line; SIGTERM closes the run KILLED with exit 143."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import REPO

from vap import storage
from vap.errors import DataError
from vap.registry import Registry
from vap.spec import parse_spec
from vap.training import checkpoint as ckpt

pytestmark = pytest.mark.slow

# 6 steps, a checkpoint every 2: the fewest with two kills each after a fresh commit before the
# last (steps 2 and 4) and a last step past both, so keep-last-N has an older checkpoint to drop
STEPS, EVERY = 6, 2


@pytest.fixture(scope="module")
def world(tiny_backbones, tmp_path_factory):
    """A synthetic snapshot on local storage (built once for the module)."""
    from vap.datasets.build import build_snapshot
    from vap.datasets.synth import synthesize

    root = tmp_path_factory.mktemp("recovery")
    spec = _spec(root, "build", tiny_backbones["cogvideox"], "sqlite:///" + str(root / "unused.db"))
    synthesize(spec.data.source, conditions_per_category=2, clips_per_condition=3, frames=17, fps=8, size=32,
               progress=False)
    build_snapshot(spec, progress=False)
    return root, tiny_backbones["cogvideox"]


def _spec(root: Path, name: str, backbone: str, tracking_uri: str, **trainer):
    return parse_spec({
        "name": name,
        "model": {"family": "cogvideox", "backbone": str(backbone), "expert": {"blocks": "all"}},
        "data": {"source": str(root / "raw"), "shards": str(root / "shards"), "frames": 9, "fps": 8,
                 "height": 32, "width": 32},
        "trainer": {"workers": 2, "zero_stage": 3, "steps": STEPS, "checkpoint_every": EVERY, "lr": 1e-3,
                    "caption_dropout": 0.0, **trainer},
        "storage": {"uri": str(root / "runs")},
        "registry": {"tracking_uri": tracking_uri, "model_name": f"{name}-expert"},
    })


def _train_workers(pid: int | None = None) -> list[psutil.Process]:
    """The Ray Train workers under process `pid` (default: this test process; other Ray clusters
    on the machine are not ours)."""
    out = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def _expert_bytes(ckpt_uri: str) -> dict[str, bytes]:
    """A checkpoint's expert files, local or in object storage: what "bitwise equal" compares."""
    folder = storage.join(ckpt_uri, ckpt.EXPERT_DIR)
    return {name: storage.read_bytes(storage.join(folder, name)) for name in sorted(storage.list_files(folder))}


def train_beside(spec, watcher: Callable[[threading.Event], None]):
    """`train(spec)` with `watcher(done)` running in a thread of its own (it kills workers as the
    run goes); `done` is set once training returns or raises, and the thread is joined."""
    from vap.training.trainer import train

    done = threading.Event()
    thread = threading.Thread(target=watcher, args=(done,), daemon=True)
    thread.start()
    try:
        return train(spec, progress=False)
    finally:
        done.set()
        thread.join()


def _commits(root: str) -> dict[int, float]:
    """step → when its commit marker was written."""
    return {step: Path(storage.parse_uri(uri).path, ckpt.COMMITTED).stat().st_mtime
            for step, uri, ok in ckpt.checkpoints(root) if ok}


def test_killed_workers_are_restarted_and_the_run_ends_bitwise_equal(ray_cluster, world):
    from vap.training.trainer import job_root, train

    root, backbone = world
    db = f"sqlite:///{root}/mlflow.db"  # local checkpoints register only with a local store
    clean = train(_spec(root, "uninterrupted", backbone, db), progress=False)

    spec = _spec(root, "killed", backbone, db, max_failures=2)
    job = job_root(spec)
    kills: list[tuple[int, float]] = []  # (pid, when)

    def killer(done):
        # Kill a worker after a checkpoint commits — the first time, then again after the restart
        # committed a newer one; rank order alternates with whichever worker psutil lists first.
        while not done.is_set() and len(kills) < 2:
            since = kills[-1][1] if kills else 0.0
            fresh = [s for s, t in _commits(job).items() if t > since and s < STEPS] if Path(
                storage.parse_uri(job).path).exists() else []
            workers = _train_workers()
            if fresh and workers:
                victim = workers[len(kills) % len(workers)]
                kills.append((victim.pid, time.time()))
                victim.send_signal(signal.SIGKILL)
            time.sleep(0.05)

    result = train_beside(spec, killer)
    assert len(kills) == 2, "the run finished before both kills"
    assert _expert_bytes(result.checkpoint_uri) == _expert_bytes(clean.checkpoint_uri)  # bitwise
    registry = Registry(db, "killed-expert")
    losses = [step for step, _ in registry.metric_history(result.run_id, "loss")]
    assert sorted(losses) == list(range(1, STEPS + 1))  # each step exactly once, despite the replays
    evals = [step for step, _ in registry.metric_history(result.run_id, "eval_loss")]
    assert sorted(evals) == [0, *range(EVERY, STEPS + 1, EVERY)]
    # keep-last-N: only committed folders remain, the newest `checkpoints_kept`
    assert [(s, ok) for s, _, ok in ckpt.checkpoints(job)] == [(STEPS - EVERY, True), (STEPS, True)]
    assert registry.client.get_run(result.run_id).info.status == "FINISHED"


def test_a_worker_data_error_is_the_users_one_line(ray_cluster, world, tmp_path):
    import shutil

    from vap.training.trainer import train

    root, backbone = world
    # a copy of the snapshot with one training shard's bytes flipped
    shards = tmp_path / "shards"
    shutil.copytree(root / "shards", shards)
    snap = shards / (shards / "LATEST").read_text().strip()  # not sources/ or quarantine/ beside it
    shard = sorted((snap / "train").rglob("shard.*.mds*"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    db = f"sqlite:///{root}/mlflow.db"
    # one restart allowed: the restarted worker must end with the same one line (a second proves no more)
    spec = _spec(root, "corrupt", backbone, db, max_failures=1)
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"shards": str(shards)})})
    with pytest.raises(DataError) as err:
        train(spec, progress=False)
    line = str(err.value)
    assert "\n" not in line and shard.name.split(".mds")[0] in line, line
    assert "re-run the same spec" not in line
    registry = Registry(db, "corrupt-expert")
    assert registry.find_run("corrupt").info.status == "FAILED"


def start_vap_train(spec, tmp_path: Path, *overrides: str, **popen) -> subprocess.Popen:
    """`vap train -c job.yaml` as a user starts it, with its own Ray cluster (RAY_ADDRESS dropped)."""
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(json.loads(spec.model_dump_json())))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen([str(REPO / ".venv/bin/vap"), "train", "-c", str(path), *overrides], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_sigterm_stops_cleanly_killed_exit_143_no_ray_left(ray_cluster, world, tmp_path):
    root, backbone = world
    db = f"sqlite:///{tmp_path}/mlflow.db"
    spec = _spec(root, "sigterm", backbone, db, steps=40, checkpoint_every=2)
    proc = start_vap_train(spec, tmp_path)
    job = Path(root / "runs" / "sigterm")
    deadline = time.monotonic() + 300
    while not (job.exists() and _commits(str(job))) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    descendants = psutil.Process(proc.pid).children(recursive=True)
    assert any("RayTrainWorker" in " ".join(p.cmdline()) for p in descendants if p.is_running())
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    gone, alive = psutil.wait_procs(descendants, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    run = Registry(db, "sigterm-expert").find_run("sigterm")
    assert run.info.status == "KILLED"

    # the driver is gone; re-running the same job resumes its run and its newest committed checkpoint
    # (in this process, on the session's Ray cluster: the resume is the trainer's, whichever driver
    # runs it, and a second `vap train` would start a Ray cluster of its own once more)
    from vap.training.trainer import train

    last = max(_commits(str(job)))
    train(spec.model_copy(update={"trainer": spec.trainer.model_copy(update={"steps": last + 2})}), progress=False)
    registry = Registry(db, "sigterm-expert")
    resumed = registry.find_run("sigterm")
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    losses = sorted(step for step, _ in registry.metric_history(run.info.run_id, "loss"))
    assert losses == list(range(1, last + 3))  # each step once, across the two drivers
