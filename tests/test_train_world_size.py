"""Resume at another world size, 2 ranks → 1 → 2, with real DeepSpeed ZeRO-3 on CPU (gloo): a
checkpoint written by 2 ranks restores on 1 and one written by 1 restores on 2 (DeepSpeed's
universal checkpoint), every expert parameter's fp32 weight and Adam moments equal to what the
saving engine held, read through DeepSpeed's own `safe_get_full_*` API on both sides. Both ranks
of a phase restore from the one folder and leave it as it was (each converts into a folder of its
own; converting inside it raced: one rank's ds_to_universal removed the slices the other was
merging, an IndexError in about 2 runs of 5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port
from test_train_preflight import _spec
from test_train_recovery import _spec as job
from test_train_recovery import world  # noqa: F401  (the module's snapshot fixture)

from vap.spec import load_spec

pytestmark = pytest.mark.slow

# One rank of one phase: build the engine (universal when the checkpoint's world size differs),
# restore if given a checkpoint, dump its state, train, save a checkpoint, dump that state.
SCRIPT = r"""
import json, sys, warnings
from pathlib import Path
warnings.filterwarnings("ignore")
import torch, torch.distributed as dist
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state
sys.path.insert(0, {tests!r})
from test_model_helpers import shard_batch
from vap.spec import JobSpec
from vap.training import checkpoint as ckpt, zero
from vap.training.families import get_family
from vap.training.model import load_vap

spec = JobSpec.model_validate(json.loads({spec!r}))
source, out, steps = {source!r}, Path({out!r}), {steps}
zero.init_distributed(False)
rank, world = dist.get_rank(), dist.get_world_size()
model = load_vap(spec.model)
universal = bool(source) and ckpt.world_size_of(source) != world
engine, scheduler = zero.build_engine(model, spec, world, universal=universal)

def dump(name):
    # collective under ZeRO-3: every rank gathers, rank 0 writes
    state = {{n: [safe_get_full_fp32_param(p), safe_get_full_optimizer_state(p, "exp_avg"),
                 safe_get_full_optimizer_state(p, "exp_avg_sq")]
             for n, p in model.named_parameters() if p.requires_grad}}
    if rank == 0:
        torch.save({{"params": state, "global_steps": engine.global_steps, "lr": scheduler.get_last_lr()}},
                   out / name)

start = 0
if source:
    start, _ = ckpt.restore(engine, Path(source))
    dump("restored.pt")
objective = get_family(spec.model.family).objective(spec.model.backbone)
for step in range(start, start + steps):
    batch = shard_batch(spec.model.family, batch=1, seed=step * 10 + rank)
    loss = objective(engine, batch, generator=torch.Generator().manual_seed(step), caption_dropout=0.0,
                     null_text=torch.zeros(batch["target_text"].shape[1:]))
    engine.backward(loss)
    engine.step()
folder = out / "checkpoint"
ckpt.save(engine, model, folder, step=start + steps, loader_state={{}}, meta={{}})
dump("saved.pt")
# leave together: a rank that exits while gloo's threads still serve the other aborts
# ("terminate called without an active exception", seen once in a full-suite run)
dist.barrier()
dist.destroy_process_group()
print("ok")
"""


def _phase(spec, ranks: int, out: Path, source: Path | None, steps: int = 2) -> None:
    """Run one phase on `ranks` CPU processes (gloo), writing into `out`."""
    out.mkdir()
    code = SCRIPT.format(tests=str(Path(__file__).parent), spec=spec.model_dump_json(), out=str(out),
                         source=str(source or ""), steps=steps)
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(r),
                                   "LOCAL_RANK": str(r), "WORLD_SIZE": str(ranks), "DS_ACCELERATOR": "cpu"})
             for r in range(ranks)]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    # every failing rank's tail: the rank that crashed first is rarely rank 0
    failed = {r: err[-3000:] for r, (proc, (out, err)) in enumerate(zip(procs, outputs, strict=True))
              if proc.returncode != 0 or not out.strip().endswith("ok")}
    assert not failed, failed


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=False)


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))}


def _assert_same_state(saved: dict, restored: dict) -> None:
    assert saved["params"].keys() == restored["params"].keys() and saved["params"]
    for name, tensors in saved["params"].items():
        for what, a, b in zip(("fp32 weight", "exp_avg", "exp_avg_sq"), tensors, restored["params"][name],
                              strict=True):
            assert torch.equal(a, b), f"{name}: {what} differs after the restore"
    assert restored["global_steps"] == saved["global_steps"] and restored["lr"] == saved["lr"]


def test_two_ranks_to_one_to_two_restores_weights_and_optimizer_state(tiny_backbones, tmp_path):
    spec = load_spec(_spec(tmp_path))  # the demo job's trainer (ZeRO-3, AdamW, warmup)
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"backbone": str(tiny_backbones["cogvideox"])})})
    two, one, again = tmp_path / "two", tmp_path / "one", tmp_path / "again"

    _phase(spec, 2, two, None)
    assert json.loads((two / "checkpoint" / "vap-checkpoint.json").read_text())["world_size"] == 2
    written = _files(two / "checkpoint")
    _phase(spec, 1, one, two / "checkpoint")
    _assert_same_state(_load(two / "saved.pt"), _load(one / "restored.pt"))
    assert _files(two / "checkpoint") == written, "restore wrote into the checkpoint it read"

    # both ranks restore from the one folder: a conversion inside it would race between them
    written = _files(one / "checkpoint")
    _phase(spec, 2, again, one / "checkpoint")
    _assert_same_state(_load(one / "saved.pt"), _load(again / "restored.pt"))
    assert _files(one / "checkpoint") == written, "restore wrote into the checkpoint it read"
    assert _load(again / "saved.pt")["global_steps"] == 6  # 2 + 2 + 2 optimizer steps


def test_vap_train_resumes_a_job_on_another_number_of_workers(ray_cluster, world):  # noqa: F811
    """2 workers → 1 → 2 through `train()`: each call picks up the newest committed checkpoint of
    the other world size, and the job's MLflow run holds every step's loss exactly once."""
    from vap import storage
    from vap.registry import Registry
    from vap.training import checkpoint as ckpt
    from vap.training.trainer import job_root, train

    root, backbone = world
    db = f"sqlite:///{root}/mlflow-world.db"
    runs = []
    for workers, steps in ((2, 2), (1, 4), (2, 6)):
        spec = job(root, "resized", backbone, db, workers=workers, steps=steps)
        result = train(spec, progress=False)
        latest = ckpt.latest_committed(job_root(spec))
        assert latest[0] == steps and ckpt.world_size_of(latest[1]) == workers
        runs.append(result.run_id)
        # as if the driver died after its last commit: the next call resumes the run, not a new one
        Registry(db, "resized-expert").client.set_terminated(result.run_id, "KILLED")
    assert len(set(runs)) == 1
    losses = sorted(step for step, _ in Registry(db, "resized-expert").metric_history(runs[0], "loss"))
    assert losses == list(range(1, 7))
    assert storage.exists(storage.join(latest[1], ckpt.EXPERT_DIR, "config.json"))
