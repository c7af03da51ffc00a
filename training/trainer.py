"""`vap train`: Ray Train `TorchTrainer` → DeepSpeed ZeRO over the VAP model → checkpoints in
object storage → a registered MLflow model version aliased `challenger`.

The driver (`train`) checks every endpoint before any work starts, then hands the loop to Ray.
Each worker (`_train_loop`) builds the model, wraps it with DeepSpeed, streams its shard of the
snapshot and reports a checkpoint every `checkpoint_every` steps, committed (manifest + marker)
once every rank's files are in storage. A worker that dies is restarted by Ray Train
(`trainer.max_failures`) from the latest committed checkpoint within the same call; re-running
the same job resumes too (`trainer.autoresume`); a finished job is not trained twice.

The seam: a project error raised in a worker (a corrupt shard's DataError) is recorded beside the
checkpoints, so restarted workers fail at once instead of retrying it, and the driver raises
that same error — one line. Every exit path closes the MLflow run: FINISHED, FAILED, or KILLED
on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vap import errors, storage
from vap.errors import TrainingError, VapError
from vap.registry import GuardedMetrics, Registry, code_version
from vap.spec import JobSpec

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
    with lease.hold(spec.storage.uri, spec.name), _sigterm_exits():  # one `vap train` of a job at a time
        return _fit(spec, registry, snapshot, storage_fs, storage_path, resume, progress)


@contextlib.contextmanager
def _sigterm_exits():
    """SIGTERM (what Kubernetes sends a pod) unwinds like Ctrl-C: the run is closed KILLED, the
    local Ray stopped, and the process exits 143 (128 + SIGTERM)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _SIGNALLED.clear()
    before = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


_SIGNALLED: list[int] = []


def _exit_on_signal(signum, frame):
    _SIGNALLED.append(signum)
    raise SystemExit(128 + signum)


def _note_sigint(trainer) -> None:
    """Ctrl-C during `fit` runs Ray Train's own handler (a graceful abort of the worker group,
    then `sys.exit(0)`); note the signal first, so the run closes KILLED and the exit is 130."""
    register = getattr(trainer, "_register_sigint_handler", None)
    if register is None:
        return

    def noting(controller):
        register(controller)
        ray_handler = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            _SIGNALLED.append(signum)
            ray_handler(signum, frame)

        signal.signal(signal.SIGINT, handler)

    trainer._register_sigint_handler = noting


def job_root(spec: JobSpec) -> str:
    """Where a job's checkpoints live (Ray Train's storage_path/name)."""
    return storage.join(spec.storage.uri, spec.name)


WORKER_ERROR = "worker-error.json"


def _fit(spec: JobSpec, registry: Registry, snapshot: str, storage_fs, storage_path: str, resume: bool,
         progress: bool) -> TrainResult:

    resume = resume and spec.trainer.autoresume
    if resume:
        _check_resumable(spec)
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

    root = job_root(spec)
    if storage.exists(storage.join(root, WORKER_ERROR)):
        storage.remove(storage.join(root, WORKER_ERROR))  # the last run's error; this run tries again
    try:
        return _fit_with_ray(spec, registry, snapshot, storage_fs, storage_path, resume, progress, run_id)
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt | SystemExit) or _SIGNALLED else "FAILED"
        try:
            registry.finish_run(run_id, status)
        finally:
            _shutdown_own_ray()
        if _SIGNALLED:  # whatever Ray turned the signal into on its way out, exit as signalled
            raise SystemExit(128 + _SIGNALLED[-1]) from None
        if isinstance(err, KeyboardInterrupt):  # Ctrl-C outside `fit`
            raise SystemExit(128 + signal.SIGINT) from None
        raise


def _fit_with_ray(spec: JobSpec, registry: Registry, snapshot: str, storage_fs, storage_path: str, resume: bool,
                  progress: bool, run_id: str) -> TrainResult:
    _ensure_ray(spec)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_signal)  # ray.init installs its own (abort) handler
    _check_placeable(spec)
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    if not spec.trainer.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"spec": spec.model_dump(mode="json"), "snapshot": snapshot, "run_id": run_id,
                           "resume": resume},
        scaling_config=ScalingConfig(num_workers=spec.trainer.workers, use_gpu=spec.trainer.use_gpu),
        torch_config=TorchConfig(backend="nccl" if spec.trainer.use_gpu else "gloo"),
        run_config=RunConfig(
            name=spec.name, storage_path=storage_path, storage_filesystem=storage_fs,
            # the worker commits and prunes (checkpoint.prune); Ray must not delete a folder it half knows
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            failure_config=FailureConfig(max_failures=spec.trainer.max_failures),
            worker_runtime_env={"env_vars": env},
        ),
    )
    _note_sigint(trainer)
    started = time.monotonic()
    try:
        with _Progress(registry, run_id, spec.trainer.steps, enabled=progress):
            result = trainer.fit()
    except Exception as err:
        project_error = _worker_error(job_root(spec), err)
        if project_error is not None:
            raise project_error from None
        raise TrainingError(f"training job {spec.name} failed: {_first_line(err)}; worker logs are under "
                            "/tmp/ray/session_latest/logs (re-run the same spec to resume)") from err
    if result.checkpoint is None:
        raise TrainingError(f"training job {spec.name} reported no checkpoint; check trainer.steps")
    ckpt_uri = _checkpoint_uri(spec.storage.uri, result.checkpoint.path)
    meta = json.loads(storage.read_bytes(storage.join(ckpt_uri, "vap-checkpoint.json")))
    metrics = {**meta["metrics"], "train_seconds": round(time.monotonic() - started, 1)}
    version = _register(registry, spec, run_id, snapshot, ckpt_uri, metrics)
    return TrainResult(run_id, spec.registry.model_name, version, ckpt_uri, metrics)


def _register(registry: Registry, spec: JobSpec, run_id: str, snapshot: str, ckpt_uri: str, metrics: dict) -> str:
    """The run → a model version @challenger, the same way `vap register --run` does it later."""
    from vap.registry import register_training

    return register_training(registry, spec, run_id, snapshot, ckpt_uri, metrics)


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


def _check_resumable(spec: JobSpec) -> None:
    """The checkpoint a resume would load must come from this model: a clear error now rather than
    a shape mismatch inside DeepSpeed on every rank. Another world size is fine (universal load)."""
    from vap.errors import ModelError
    from vap.training import checkpoint as ckpt

    latest = ckpt.latest_committed(job_root(spec))
    if latest is None:
        return
    meta = json.loads(storage.read_bytes(storage.join(latest[1], ckpt.META)))
    want, have = spec.model.model_dump(mode="json"), meta.get("model")
    if have is not None and have != want:
        diff = sorted(k for k in _flatten(want) if _flatten(have).get(k) != _flatten(want)[k])
        raise ModelError(f"{latest[1]}: checkpoint of job {spec.name} was trained with another model "
                         f"({', '.join(f'model.{k}={_flatten(have).get(k)!r}' for k in diff)}); restore the job's "
                         "model section, rename the job, or pass --no-resume")
    if meta.get("world_size", spec.trainer.workers) != spec.trainer.workers:
        log.warning("checkpoint %s was written by %d workers, resuming on %d: weights and optimizer state are "
                    "exact, noise and per-step batches are not (training/README.md, World size)",
                    latest[1], meta["world_size"], spec.trainer.workers)
    log.info("resuming job %s from committed checkpoint %s (step %d)", spec.name, latest[1], latest[0])


def _check_placeable(spec: JobSpec) -> None:
    """Workers the Ray cluster cannot place would wait forever: refuse them up front."""
    import ray

    need = "GPU" if spec.trainer.use_gpu else "CPU"
    have = ray.cluster_resources().get(need, 0)
    if spec.trainer.workers > have:
        raise TrainingError(f"trainer.workers={spec.trainer.workers} needs {spec.trainer.workers} {need}s but the "
                            f"Ray cluster has {have:g}; lower trainer.workers or add nodes")


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(err).__name__


def _worker_error(root: str, err: BaseException) -> VapError | None:
    """The project error a worker raised: from the record it left beside the checkpoints, else
    from Ray's exception (WorkerGroupError.worker_failures, causes)."""
    try:
        record = json.loads(storage.read_bytes(storage.join(root, WORKER_ERROR)))
        cls = getattr(errors, record["type"], None)
        if isinstance(cls, type) and issubclass(cls, VapError):
            return cls(record["message"])
    except Exception:  # no record (or storage is what failed): look in Ray's exception
        pass
    seen, todo = set(), [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, VapError):
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__,
                 *getattr(e, "worker_failures", {}).values()]
    return None


def _record_worker_error(root: str, err: VapError) -> None:
    try:
        storage.write_bytes(storage.join(root, WORKER_ERROR),
                            json.dumps({"type": type(err).__name__, "message": str(err)}).encode())
    except Exception:  # the driver still finds the error in Ray's exception
        log.exception("could not record the worker error")


_OWN_RAY = False


def _shutdown_own_ray() -> None:
    """Stop the local Ray this process started (its workers with it); a cluster is left alone."""
    global _OWN_RAY
    if _OWN_RAY:
        import ray

        ray.shutdown()
        _OWN_RAY = False


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
        global _OWN_RAY
        ray.init(num_cpus=max(os.cpu_count() or 1, spec.trainer.workers + 1), include_dashboard=False,
                 log_to_driver=False)
        _OWN_RAY = True


# --- worker ------------------------------------------------------------------------------
def _train_loop(config: dict) -> None:
    spec = JobSpec.model_validate(config["spec"])
    root = job_root(spec)
    try:
        if storage.exists(storage.join(root, WORKER_ERROR)):  # a restart after a project error: same error, at once
            raise _worker_error(root, RuntimeError()) or TrainingError(f"{root}: an earlier worker failed")
        _Worker(spec, config).run()
    except VapError as err:
        _record_worker_error(root, err)
        raise


class _Worker:
    """One rank's training, in parts: build → (restore) → loop of train_step, step_metrics,
    evaluate and checkpoint (save, upload, commit) on schedule, publish (rank 0 → MLflow)."""

    def __init__(self, spec: JobSpec, config: dict):
        import warnings

        warnings.filterwarnings("ignore", message=".*deprecated.*", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        import ray.train
        import torch

        from vap.datasets.loader import load_null_text, make_loader
        from vap.training import checkpoint as ckpt
        from vap.training import zero
        from vap.training.families import get_family
        from vap.training.model import load_vap

        self.spec, self.t, self.config = spec, spec.trainer, config
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        zero.init_distributed(self.t.use_gpu)
        torch.manual_seed(self.t.seed)

        self.model = load_vap(spec.model)
        if self.t.activation_checkpointing:
            self.model.enable_gradient_checkpointing()
        self.frozen = [p for p in self.model.parameters() if not p.requires_grad]
        self.objective = get_family(spec.model.family).objective(spec.model.backbone)
        # the checkpoint to resume from, chosen now: one of another world size needs a universal engine
        self.latest = ckpt.latest_committed(job_root(spec)) if config.get("resume", True) else None
        universal = self.latest is not None and ckpt.world_size_of(self.latest[1]) != self.world
        self.engine, self.scheduler = zero.build_engine(self.model, spec, self.world, universal)
        self.frozen_before = zero.partition_fingerprint(self.frozen)

        self.snapshot = config["snapshot"]
        cache = Path(tempfile.gettempdir()) / "vap-streaming" / spec.name
        self.loader = make_loader(self.snapshot, "train", batch_size=self.t.batch_size, seed=self.t.seed,
                                  local_cache=cache / "train")
        self.eval_batch = _eval_batch(self.snapshot, self.t.batch_size, cache / "eval")
        self.null_text = load_null_text(self.snapshot)
        # rank 0 streams step metrics to the run the driver opened (live curves, the progress bar)
        self.tracker = Registry(spec.registry.tracking_uri, spec.registry.model_name) if self.rank == 0 else None
        # a tracking-server outage buffers step metrics and retries; it never kills the job
        self.step_log = GuardedMetrics(self.tracker, config.get("run_id")) if self.tracker else None
        self.pending: dict[int, dict] = {}  # step → metrics since the last committed checkpoint
        self.logged = -1  # the last step MLflow holds (rank 0)
        self.step = 0
        self.flops = _assumed_flops(spec) if self.t.use_gpu else None  # MFU: GPUs only

    # parts ------------------------------------------------------------------------------
    def mean(self, x: float) -> float:
        import torch
        import torch.distributed as dist

        v = torch.tensor([x], dtype=torch.float64)
        dist.all_reduce(v)
        return v.item() / self.world

    def restore(self) -> None:
        from vap.training import checkpoint as ckpt

        if self.latest is None:
            return
        with tempfile.TemporaryDirectory() as d:
            self.step, loader_state = ckpt.restore(self.engine, ckpt.fetch(self.latest[1], Path(d)))
            history = json.loads((Path(d) / ckpt.META).read_text()).get("history", [])
        if self.tracker:
            self.log_history(history)
        if loader_state:
            self.loader.load_state_dict(loader_state)

    def last_logged(self) -> int:
        """The last step MLflow holds for this run (-1: none), as a restarted rank 0 finds it."""
        run_id = self.config["run_id"]
        logged = [s for s, _ in self.tracker.metric_history(run_id, "loss")]
        return max(logged) if logged else (0 if self.tracker.metric_history(run_id, "eval_loss") else -1)

    def log_history(self, history: list) -> None:
        """The step metrics a checkpoint covers, minus those MLflow already has: steps a killed
        worker computed but never got logged are not lost (one atomic batch per step, in step
        order, so MLflow holds a prefix)."""
        for step, values in history:
            if step > self.logged:
                self.tracker.log_metrics(self.config["run_id"], step, **values)
                self.logged = step

    def publish(self, step: int, values: dict) -> None:
        """Rank 0 streams a step's metrics as it ends; a step MLflow already holds (replayed
        after a restart, bitwise the same) is not logged twice."""
        if self.step_log and step > self.logged:
            self.step_log.log(step, **values)
            self.logged = step

    def step_metrics(self, loss: float, tokens: int, elapsed: float) -> dict:
        """Loss, learning rate, gradient norm, throughput and every rank's peak memory (collective)."""
        from vap.training import zero

        values = {"loss": self.mean(loss), "lr": self.scheduler.get_last_lr()[0],
                  "grad_norm": float(self.engine.get_global_grad_norm() or 0.0),
                  "samples_per_s": self.t.batch_size * self.t.grad_accum_steps * self.world / elapsed,
                  "video_tokens_per_s": self.mean(tokens) * self.world / elapsed}
        if self.flops:
            per_step, peak = self.flops
            values["mfu"] = per_step / elapsed / peak
        peaks = zero.per_rank(zero.peak_memory_mb(), self.world, self.rank)
        return values | {f"peak_memory_mb_rank{r}": mb for r, mb in enumerate(peaks)}

    def evaluate(self) -> float:
        import torch

        # Fixed batch, fixed noise and timesteps: comparable across steps, unlike the training loss.
        with torch.no_grad():
            loss = self.objective(self.engine, self.eval_batch, generator=torch.Generator().manual_seed(1234),
                                  caption_dropout=0.0, null_text=self.null_text)
        return self.mean(loss.item())

    def train_step(self, batches) -> tuple[float, int]:
        """One optimizer step over `grad_accum_steps` micro-batches; (mean loss, video tokens)."""
        import torch

        losses, tokens = [], 0
        for micro in range(self.t.grad_accum_steps):
            batch = next(batches)
            # noise and timesteps from (seed, step, micro-batch, rank): exact on resume
            gen = torch.Generator().manual_seed(self.t.seed * 1_000_003 + self.step * 1_009 + micro * 7_919 + self.rank)
            loss = self.objective(self.engine, batch, generator=gen, caption_dropout=self.t.caption_dropout,
                                  null_text=self.null_text)
            self.engine.backward(loss)
            self.engine.step()  # DeepSpeed steps the optimizer at the accumulation boundary only
            losses.append(loss.item())
            tokens += _video_tokens(batch)
        self.step += 1
        return sum(losses) / len(losses), tokens

    def checkpoint(self, metrics: dict) -> None:
        """Save (with the step metrics since the last checkpoint), upload (every rank its own
        files), commit (rank 0, once all are stored), prune."""
        import ray.train
        import torch.distributed as dist
        from ray.train import Checkpoint

        from vap.training import checkpoint as ckpt

        root = job_root(self.spec)
        name = ckpt.step_dir(self.step)
        fs, base = storage.pyarrow_fs(self.spec.storage.uri)

        def upload(checkpoint: Checkpoint, dir_name: str) -> Checkpoint:
            ckpt.upload(Path(checkpoint.path), storage.join(root, dir_name))
            return Checkpoint(f"{base}/{self.spec.name}/{dir_name}", filesystem=fs)

        with tempfile.TemporaryDirectory() as d:
            history = sorted(self.pending.items())
            ckpt.save(self.engine, self.model, Path(d), step=self.step, loader_state=self.loader.state_dict(),
                      meta={"metrics": metrics, "snapshot": self.snapshot, "job": self.spec.name,
                            "model": self.spec.model.model_dump(mode="json"), "history": history})
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d), checkpoint_dir_name=name,
                             checkpoint_upload_fn=upload)
        dist.barrier()  # every rank's upload has returned
        if self.rank == 0:
            ckpt.commit(storage.join(root, name), self.world)
            ckpt.prune(root, self.t.checkpoints_kept)
        self.pending.clear()
        dist.barrier()

    # loop -------------------------------------------------------------------------------
    def run(self) -> None:
        if self.tracker:
            self.logged = self.last_logged()
            if self.flops:  # what the MFU assumes, beside it
                self.tracker.set_tags(self.config["run_id"], **{"vap.mfu.flops_per_step": f"{self.flops[0]:.4g}",
                                                               "vap.mfu.peak_flops": f"{self.flops[1]:.4g}"})
        monitor = _system_metrics(self.spec, self.config.get("run_id")) if self.tracker else None
        try:
            self.loop()
        finally:
            if monitor:
                monitor.finish()

    def loop(self) -> None:
        from vap.training import zero

        self.restore()
        if self.step == 0:
            self.pending[0] = {"eval_loss": self.evaluate()}
            self.publish(0, self.pending[0])
        batches = _forever(self.loader)
        last = time.monotonic()
        while self.step < self.t.steps:
            loss, tokens = self.train_step(batches)
            now, elapsed = time.monotonic(), max(time.monotonic() - last, 1e-9)
            last = now
            values = self.pending[self.step] = self.step_metrics(loss, tokens, elapsed)
            if self.step % self.t.checkpoint_every == 0 or self.step == self.t.steps:
                eval_loss = self.evaluate()
                unchanged = self.mean(float(zero.partition_fingerprint(self.frozen) == self.frozen_before)) == 1.0
                values["eval_loss"] = eval_loss
                self.checkpoint({"step": self.step, "loss": values["loss"], "eval_loss": eval_loss,
                                 "frozen_unchanged": unchanged})
            self.publish(self.step, values)
        if self.step_log:
            self.step_log.close()


def _system_metrics(spec: JobSpec, run_id: str | None):
    """MLflow's own system metrics monitor on this node, sampling every
    `registry.system_metrics_interval` seconds into the job's run (a restarted rank 0 continues
    its step count); None when off. It stops by itself once the run is closed."""
    interval = spec.registry.system_metrics_interval
    if not interval or not run_id:
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, resume_logging=True,
                                   tracking_uri=spec.registry.tracking_uri)
    monitor.start()
    return monitor


def _assumed_flops(spec: JobSpec) -> tuple[float, float] | None:
    """(training FLOPs of one rank's optimizer step as `vap plan` counts them — docs/PLAN.md —,
    the GPU's peak FLOP/s `vap plan` assumes): the MFU's numerator and denominator."""
    from vap.plan import plan, setup_from_spec

    try:
        p = plan(setup_from_spec(spec))
    except Exception as err:  # noqa: BLE001 - a model vap plan cannot count: no MFU, training goes on
        log.warning("no MFU: vap plan cannot count this model's FLOPs (%s)", err)
        return None
    return p.flops_per_step * spec.trainer.grad_accum_steps, p.setup["peak_tflops"] * 1e12


def _forever(loader):
    while True:  # epochs
        yield from loader


def _video_tokens(batch: dict) -> int:
    """Latent positions of target + reference video ([B, C, F, h, w] latents)."""
    n = 0
    for key in ("target_latent", "reference_latent"):
        if key in batch:
            shape = tuple(batch[key].shape)
            n += shape[0] * shape[2] * shape[3] * shape[4] if len(shape) == 5 else 0
    return n


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
                    latest = self.registry.latest_metric(self.run_id, "loss")
                except Exception:  # the bar is best effort; training goes on regardless
                    latest = None
                if latest:
                    step, loss = latest
                    bar.update(task, completed=step, description=f"loss {loss:.4f}")
                if stopping:
                    return

