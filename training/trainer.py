"""`vap train`: Ray Train `TorchTrainer` → DeepSpeed ZeRO over the VAP model → checkpoints in
object storage → a registered MLflow model version aliased `challenger`.

The driver (`train`) checks every endpoint before any work starts, then hands the loop to Ray.
Each worker (`_train_loop`) builds the model, wraps it with DeepSpeed, streams its shard of the
snapshot and reports a checkpoint every `checkpoint_every` steps. Re-running the same job name
resumes from the latest checkpoint; a finished job is not trained twice.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vap import storage
from vap.errors import TrainingError
from vap.registry import Registry, code_version
from vap.spec import JobSpec, dump_spec

log = logging.getLogger(__name__)

# Non-secret settings the workers need; credentials reach them through their own environment.
WORKER_ENV = ("AWS_ENDPOINT_URL", "S3_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_REGION",
              "AWS_DEFAULT_REGION", "TORCH_EXTENSIONS_DIR", "DS_ACCELERATOR", "HF_HUB_OFFLINE", "VAP_CACHE")


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_name: str
    version: str
    checkpoint_uri: str
    metrics: dict

    def summary(self) -> str:
        m = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(self.metrics.items()))
        return (f"registered {self.model_name} version {self.version} (@challenger) from run {self.run_id}\n"
                f"  checkpoint: {self.checkpoint_uri}\n  metrics: {m}")


def deepspeed_config(spec: JobSpec, world_size: int) -> dict:
    t = spec.trainer
    return {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": t.batch_size * world_size,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": {
            "stage": t.zero_stage,
            "contiguous_gradients": True,
            # On CPU (tests, demo) tiny parameters must be partitioned too, or ZeRO-3 is not exercised.
            "stage3_param_persistence_threshold": 100_000 if t.use_gpu else 0,
        },
        "bf16": {"enabled": t.use_gpu},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


# --- driver ------------------------------------------------------------------------------
def train(spec: JobSpec, resume: bool = True, progress: bool = True) -> TrainResult:
    from vap import lease
    from vap.datasets.loader import resolve_snapshot
    from vap.datasets.snapshot import require_train_pairs

    storage.sync_endpoint_env()
    registry = Registry(spec.registry.tracking_uri, spec.registry.model_name, spec.registry.experiment,
                        artifact_location=storage.join(spec.storage.uri, "mlflow-artifacts"))
    registry.check()
    snapshot = resolve_snapshot(spec.data.shards, spec.data.snapshot)
    require_train_pairs(snapshot)
    storage_fs, storage_path = storage.pyarrow_fs(spec.storage.uri)
    _check_writable(spec.storage.uri)
    with lease.hold(spec.storage.uri, spec.name):  # one `vap train` of a job at a time
        return _fit(spec, registry, snapshot, storage_fs, storage_path, resume, progress)


def _fit(spec: JobSpec, registry: Registry, snapshot: str, storage_fs, storage_path: str, resume: bool,
         progress: bool) -> TrainResult:
    previous = registry.find_run(spec.name) if resume else None
    if previous is not None and previous.info.status == "FINISHED" and previous.data.tags.get("vap.version"):
        log.info("job %s already finished (run %s); not training again — rename the job to retrain",
                 spec.name, previous.info.run_id)
        return _result_of(previous, spec)
    if previous is not None:
        run_id = previous.info.run_id
        log.info("resuming job %s in MLflow run %s", spec.name, run_id)
    else:
        run_id = registry.start_run(spec.name, _flatten(spec.model_dump(mode="json")),
                                    {"vap.snapshot": snapshot, "vap.backbone": spec.model.backbone,
                                     "vap.code_version": code_version()})

    _ensure_ray(spec)
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    if not spec.trainer.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"spec": spec.model_dump(mode="json"), "snapshot": snapshot, "run_id": run_id},
        scaling_config=ScalingConfig(num_workers=spec.trainer.workers, use_gpu=spec.trainer.use_gpu),
        torch_config=TorchConfig(backend="nccl" if spec.trainer.use_gpu else "gloo"),
        run_config=RunConfig(
            name=spec.name, storage_path=storage_path, storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=0),
            worker_runtime_env={"env_vars": env},
        ),
    )
    started = time.monotonic()
    try:
        with _Progress(registry, run_id, spec.trainer.steps, enabled=progress):
            result = trainer.fit()
    except Exception as err:
        registry.finish_run(run_id, "FAILED")
        raise TrainingError(f"training job {spec.name} failed: {err}; worker logs are under "
                            "/tmp/ray/session_latest/logs (re-run the same spec to resume)") from err
    if result.checkpoint is None:
        raise TrainingError(f"training job {spec.name} reported no checkpoint; check trainer.steps")
    ckpt_uri = _checkpoint_uri(spec.storage.uri, result.checkpoint.path)
    meta = json.loads(storage.read_bytes(storage.join(ckpt_uri, "vap-checkpoint.json")))
    metrics = {**meta["metrics"], "train_seconds": round(time.monotonic() - started, 1)}
    version = _register(registry, spec, run_id, snapshot, ckpt_uri, metrics)
    return TrainResult(run_id, spec.registry.model_name, version, ckpt_uri, metrics)


def _register(registry: Registry, spec: JobSpec, run_id: str, snapshot: str, ckpt_uri: str, metrics: dict) -> str:
    from vap.training.plots import plot_loss

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "job.yaml").write_text(dump_spec(spec))
        (tmp / "deepspeed_config.json").write_text(json.dumps(deepspeed_config(spec, spec.trainer.workers), indent=2))
        plot_loss({k: registry.metric_history(run_id, k) for k in ("loss", "eval_loss")}, tmp / "loss.png")
        registry.log_artifacts(run_id, tmp)
        report = storage.join(snapshot, "report")
        if storage.exists(report):
            registry.log_artifacts(run_id, storage.materialize(report, tmp / "report"), "dataset")
    registry.log_metrics(run_id, 0, **{f"final_{k}": v for k, v in metrics.items() if isinstance(v, int | float)})
    tags = {"run_id": run_id, "checkpoint_uri": ckpt_uri, "data_snapshot": snapshot,
            "backbone": spec.model.backbone, "family": spec.model.family, "code_version": code_version(),
            "job": spec.name, **{f"metric.{k}": v for k, v in metrics.items()}}
    version = registry.register(run_id, storage.join(ckpt_uri, "expert"), tags,
                                description=f"VAP expert for {spec.model.backbone}, job {spec.name}")
    registry.set_tags(run_id, **{"vap.version": version, "vap.checkpoint_uri": ckpt_uri})
    registry.finish_run(run_id)
    return version


def _result_of(run, spec: JobSpec) -> TrainResult:
    tags = run.data.tags
    return TrainResult(run.info.run_id, spec.registry.model_name, tags["vap.version"],
                       tags.get("vap.checkpoint_uri", ""),
                       {k.removeprefix("final_"): v for k, v in run.data.metrics.items() if k.startswith("final_")})


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _checkpoint_uri(storage_uri: str, path: str) -> str:
    return f"s3://{path}" if storage.parse_uri(storage_uri).scheme == "s3" else path


def _check_writable(uri: str) -> None:
    probe = storage.join(uri, ".vap-write-probe")
    storage.write_bytes(probe, b"ok")
    storage.remove(probe)


def _ensure_ray(spec: JobSpec) -> None:
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()  # a cluster (KubeRay sets RAY_ADDRESS for the job's entrypoint)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, spec.trainer.workers + 1), include_dashboard=False,
                 log_to_driver=False)


# --- worker ------------------------------------------------------------------------------
def _train_loop(config: dict) -> None:
    import warnings

    warnings.filterwarnings("ignore", message=".*deprecated.*", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import deepspeed
    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train import Checkpoint

    from vap.datasets.loader import load_null_text, make_loader
    from vap.training import checkpoint as ckpt
    from vap.training.families import get_family
    from vap.training.model import load_vap

    spec = JobSpec.model_validate(config["spec"])
    t = spec.trainer
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    deepspeed.init_distributed(dist_backend="nccl" if t.use_gpu else "gloo")  # adopts Ray's process group
    torch.manual_seed(t.seed)

    model = load_vap(spec.model)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    trainable = list(model.expert_parameters())
    objective = get_family(spec.model.family).objective(spec.model.backbone)
    optimizer = torch.optim.AdamW(trainable, lr=t.lr, betas=(0.9, 0.99), weight_decay=t.weight_decay)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, t.warmup_steps)))
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=warmup,
                                                           config=deepspeed_config(spec, world))
    frozen_before = ckpt.partition_fingerprint(frozen)

    snapshot = config["snapshot"]
    cache = Path(tempfile.gettempdir()) / "vap-streaming" / spec.name
    loader = make_loader(snapshot, "train", batch_size=t.batch_size, seed=t.seed, local_cache=cache / "train")
    eval_batch = _eval_batch(snapshot, t.batch_size, cache / "eval")
    null_text = load_null_text(snapshot)

    def mean(x: float) -> float:
        v = torch.tensor([x], dtype=torch.float64)
        dist.all_reduce(v)
        return v.item() / world

    def evaluate() -> float:
        # Fixed batch, fixed noise and timesteps: comparable across steps, unlike the training loss.
        with torch.no_grad():
            loss = objective(engine, eval_batch, generator=torch.Generator().manual_seed(1234),
                             caption_dropout=0.0, null_text=null_text)
        return mean(loss.item())

    step = 0
    resumed = ray.train.get_checkpoint()
    if resumed:
        with resumed.as_directory() as d:
            step, loader_state = ckpt.restore(engine, Path(d))
        if loader_state:
            loader.load_state_dict(loader_state)
    # rank 0 streams step metrics to the run the driver opened (live curves, the driver's progress bar)
    tracker = Registry(spec.registry.tracking_uri, spec.registry.model_name) if rank == 0 else None
    run_id = config["run_id"]
    if step == 0:
        eval_loss = evaluate()
        if tracker:
            tracker.log_metrics(run_id, 0, eval_loss=eval_loss)

    batches = iter(loader)
    last = time.monotonic()
    while step < t.steps:
        try:
            batch = next(batches)
        except StopIteration:  # next epoch
            batches = iter(loader)
            continue
        gen = torch.Generator().manual_seed(t.seed * 1_000_003 + step * 1_009 + rank)  # exact on resume
        loss = objective(engine, batch, generator=gen, caption_dropout=t.caption_dropout, null_text=null_text)
        engine.backward(loss)
        engine.step()
        step += 1
        loss_mean = mean(loss.item())
        now = time.monotonic()
        if tracker:
            tracker.log_metrics(run_id, step, loss=loss_mean, lr=scheduler.get_last_lr()[0],
                                    pairs_per_s=t.batch_size * world / max(now - last, 1e-9))
        last = now
        if step % t.checkpoint_every == 0 or step == t.steps:
            eval_loss = evaluate()
            unchanged = mean(float(ckpt.partition_fingerprint(frozen) == frozen_before)) == 1.0
            metrics = {"step": step, "loss": loss_mean, "eval_loss": eval_loss, "frozen_unchanged": unchanged}
            if tracker:
                tracker.log_metrics(run_id, step, eval_loss=eval_loss)
            with tempfile.TemporaryDirectory() as d:
                ckpt.save(engine, model, Path(d), step=step, loader_state=loader.state_dict(),
                          meta={"metrics": metrics, "snapshot": snapshot, "job": spec.name})
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))


def _eval_batch(snapshot: str, batch_size: int, cache: Path) -> dict:
    """The first `val` batch in file order — or `train`'s when the snapshot holds no val pairs."""
    from vap.datasets.loader import make_loader
    from vap.datasets.snapshot import INDEX

    split = "val" if storage.exists(storage.join(snapshot, "val", INDEX)) else "train"
    if split == "train":
        log.warning("%s has no val pairs: evaluating on the first training batch", snapshot)
    return next(iter(make_loader(snapshot, split, batch_size=batch_size, seed=0, local_cache=cache, shuffle=False)))


class _Progress:
    """A progress bar on the driver, fed by the step metrics rank 0 streams to MLflow."""

    def __init__(self, registry: Registry, run_id: str, total: int, enabled: bool = True):
        self.registry, self.run_id, self.total, self.enabled = registry, run_id, total, enabled
        self._stop = threading.Event()

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.enabled:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                   TimeElapsedColumn())
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task("starting Ray workers…", total=self.total)
            while True:
                stopping = self._stop.wait(2.0)
                try:
                    history = self.registry.metric_history(self.run_id, "loss")
                except Exception:  # the bar is best effort; training goes on regardless
                    history = []
                if history:
                    step, loss = max(history)
                    bar.update(task, completed=step, description=f"loss {loss:.4f}")
                if stopping:
                    return

