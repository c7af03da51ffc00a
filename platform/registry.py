"""The one place that talks to MLflow: runs, metrics, artifacts, model versions, aliases.

A trained expert becomes a model version whose `source` is the expert folder inside its
checkpoint (object storage), tagged with its lineage (run, data snapshot, backbone, code
version). New versions get alias `challenger`; `promote` moves `champion` and records who held
it before, so a rollback is one more `promote`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from vap.errors import RegistryError

log = logging.getLogger(__name__)

CHALLENGER, CHAMPION = "challenger", "champion"
PROMOTED, REFUSED, FORCED, ROLLED_BACK = "promoted", "refused", "forced", "rolled_back"
UNCHANGED = "unchanged"  # promoting the alias's own holder: recorded, nothing moves
LEDGER_RUN = "registry-ledger"  # one run per model in the experiment holds the ledger artifacts
EVAL_PREFIX = "eval."  # evaluation metrics: run metrics and version tags of this name


@dataclass(frozen=True)
class Promotion:
    """One decision of the gate, as the ledger records it."""

    model_name: str
    alias: str
    version: str
    previous: str | None
    decision: str = PROMOTED  # promoted | refused | forced | rolled_back | unchanged
    failures: tuple[str, ...] = ()
    reason: str = ""

    @property
    def moved(self) -> bool:
        """The alias holds `version` now (it passed, was forced, rolled back, or held it already)."""
        return self.decision != REFUSED

    def summary(self) -> str:
        if self.decision == UNCHANGED:
            return f"{self.model_name}@{self.alias} is already version {self.version}: nothing moved"
        if not self.moved:
            return (f"{self.model_name}@{self.alias} stays at version {self.previous}: version {self.version} refused — "
                    + "; ".join(self.failures))
        was = f"(was version {self.previous})" if self.previous else "(new alias)"
        how = "" if self.decision == PROMOTED else f" [{self.decision.replace('_', ' ')}: {self.reason}]"
        return f"{self.model_name}@{self.alias} -> version {self.version} {was}{how}"


def code_version() -> str:
    """The commit this code is: stamped into the image at build time (VAP_CODE_VERSION), else git."""
    if os.environ.get("VAP_CODE_VERSION", "unknown") != "unknown":
        return os.environ["VAP_CODE_VERSION"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Registry:
    def __init__(self, tracking_uri: str, model_name: str, experiment: str = "vap",
                 artifact_location: str | None = None, create: bool = True, lock_uri: str | None = None):
        from vap.spec import parse_tracking_uri

        self.tracking_uri = parse_tracking_uri(tracking_uri)
        self.create = create  # False: a sqlite database must exist already (a mistyped path is an error)
        self.model_name = model_name
        self.experiment = experiment
        # Only used when this client creates the experiment against a local store; a tracking
        # server chooses (and proxies) its own artifact store.
        self.artifact_location = artifact_location
        # Where promotions take their lease (a storage URI; the spec's storage.uri). A sqlite
        # store's own folder serves when none is given.
        if lock_uri is None and self.tracking_uri.startswith("sqlite:///"):
            lock_uri = str(Path(self.tracking_uri.removeprefix("sqlite:///")).parent)
        self.lock_uri = lock_uri
        self.policy = None  # a PromotionSpec (the job spec's registry.promotion); None: the default gate
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import mlflow

            self.check()
            mlflow.set_tracking_uri(self.tracking_uri)
            self._client = mlflow.MlflowClient(self.tracking_uri)
        return self._client

    def check(self) -> None:
        """Fail fast, with the fix, when the tracking server cannot be reached."""
        if self.tracking_uri.startswith("sqlite:///"):
            return check_sqlite_store(self.tracking_uri, self.create)
        if not self.tracking_uri.startswith("http"):
            return
        url = self.tracking_uri.rstrip("/") + "/health"
        try:
            urllib.request.urlopen(url, timeout=5)
        except OSError as err:
            reason = getattr(err, "reason", err)
            raise RegistryError(
                f"cannot reach the MLflow tracking server at {self.tracking_uri} ({reason}); "
                "start it (mlflow server …) or fix registry.tracking_uri"
            ) from None

    # --- runs -----------------------------------------------------------------------------
    def find_run(self, job: str):
        """The latest MLflow run of job `job` (tag vap.job), or None."""
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            return None
        runs = self.client.search_runs([exp.experiment_id], f"tags.`vap.job` = '{job}'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if runs else None

    def start_run(self, job: str, params: dict, tags: dict) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        local_store = not self.tracking_uri.startswith("http")
        exp_id = exp.experiment_id if exp else self.client.create_experiment(
            self.experiment, artifact_location=self.artifact_location if local_store else None)
        run = self.client.create_run(exp_id, run_name=job, tags={"vap.job": job, **tags})
        self.client.log_batch(run.info.run_id, params=_params(params))
        return run.info.run_id

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(run_id, key)]

    def latest_metric(self, run_id: str, key: str) -> tuple[int, float] | None:
        """(step, value) of `key` at its highest step — the one row MLflow keeps per key, so a poller
        does not fetch a history that grows with the run."""
        for metric in self.client.get_run(run_id).data.to_proto().metrics:
            if metric.key == key:
                return metric.step, metric.value
        return None

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_metrics(self, run_id: str, step: int, **values: float) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def set_tags(self, run_id: str, **tags: str) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def finish_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Close the run; with the server unreachable, say so and leave it (MLflow's client would
        retry for minutes and then hide the error that ended the job)."""
        try:
            self.check()
        except RegistryError as err:
            log.warning("cannot mark run %s %s: %s", run_id, status, err)
            return
        self.client.set_terminated(run_id, status)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    # --- model versions and aliases -------------------------------------------------------
    def log_expert_model(self, run_id: str, ref: dict, card: str, job_yaml: str) -> str:
        """Log the MLflow model of an expert (`vap.expert_model`: MLmodel, pyfunc wrapper, card,
        the reference to its weights) as a LoggedModel of `run_id`; returns its `models:/<id>` URI."""
        import tempfile

        from mlflow.entities import LoggedModelOutput
        from mlflow.models import Model

        from vap import expert_model

        exp_id = self.client.get_run(run_id).info.experiment_id
        logged = self.client.create_logged_model(exp_id, name="vap-expert", source_run_id=run_id,
                                                 model_type="vap-expert")
        mlmodel = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id,
                        model_id=logged.model_id)
        with tempfile.TemporaryDirectory() as tmp:
            # saved, not `log_model`ed: log_model would load the backbone and generate a video to
            # validate the input example; this writes the same folder and runs nothing
            folder = expert_model.save(Path(tmp) / "model", ref, card, job_yaml, mlflow_model=mlmodel)
            self.client.log_model_artifacts(logged.model_id, str(folder))
        self.client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        self.client.finalize_logged_model(logged.model_id, "READY")
        return f"models:/{logged.model_id}"

    def register(self, run_id: str, source: str, tags: dict, description: str = "") -> str:
        """Register `source` (an MLflow model, `models:/<id>`, or a folder) as a new version → challenger."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException:
            self.client.create_registered_model(self.model_name, description="VAP experts (MoT) by training run")
        model_id = source.removeprefix("models:/") if source.startswith("models:/m-") else None
        mv = self.client.create_model_version(self.model_name, source=source, run_id=run_id,
                                              tags={k: str(v) for k, v in tags.items()}, description=description,
                                              model_id=model_id)
        self.client.set_registered_model_alias(self.model_name, CHALLENGER, mv.version)
        log.info("registered %s version %s (%s) as @%s", self.model_name, mv.version, source, CHALLENGER)
        return str(mv.version)

    def version_of(self, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.model_name, alias).version)
        except MlflowException:
            return None

    def get_version(self, version: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(self.model_name, str(version))
        except MlflowException:
            raise RegistryError(
                f"model {self.model_name!r} has no version {version} at {self.tracking_uri}; "
                "list versions in the MLflow UI or with `mlflow models`"
            ) from None

    def expert_ref(self, ref: str) -> tuple[str, dict]:
        """(version, where its expert is): `expert_uri`, `backbone`, and for versions registered as
        MLflow models `backbone_revision` and `files` (sha256 per file) to check what is loaded."""
        from vap.storage import is_storage_location

        version = self.resolve(ref)
        tags = version.tags
        if "expert_uri" not in tags:  # a version registered before the MLflow model: source is the folder
            source = version.source
            if not is_storage_location(source):  # runs:/, mlflow-artifacts:/ …: MLflow fetches it
                import mlflow

                source = mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=self.tracking_uri)
            return str(version.version), {"expert_uri": source, "backbone": tags.get("backbone"), "files": {}}
        return str(version.version), {"expert_uri": tags["expert_uri"], "backbone": tags["backbone"],
                                      "backbone_revision": tags.get("backbone_revision"),
                                      "files": json.loads(tags.get("expert_files", "{}"))}

    def resolve(self, ref: str):
        """A version from `models:/name@alias`, `models:/name/3`, `@alias` or `3`."""
        ref = ref.removeprefix(f"models:/{self.model_name}")
        ref = ref.lstrip("/")
        if ref.startswith("@"):
            version = self.version_of(ref[1:])
            if version is None:
                raise RegistryError(f"{self.model_name}@{ref[1:]} does not exist; train and register a version first")
            ref = version
        return self.get_version(ref)

    # --- evaluation ----------------------------------------------------------------------
    def version_metrics(self, version: str) -> dict[str, float]:
        """What the gate reads: training's `metric.*` tags (prefix dropped) and evaluation's `eval.*` tags."""
        metrics = {}
        for key, value in self.get_version(version).tags.items():
            name = key.removeprefix("metric.") if key.startswith("metric.") else key if key.startswith(EVAL_PREFIX) else None
            if name is None:
                continue
            try:
                metrics[name] = float(value)
            except ValueError:
                continue
        return metrics

    def record_evaluation(self, version: str, metrics: dict[str, float], artifacts=(),
                          artifact_path: str = "evaluation") -> None:
        """Put evaluation results on a model version: metrics on its run and as version tags (the
        gate reads the tags), files (a grid PNG, an mp4, JSON) as artifacts of its run under
        `<artifact_path>/v<version>/`. Names start with `eval.` (e.g. eval.val.alignment_top1)."""
        from mlflow.entities import Metric

        wrong = [k for k in metrics if not k.startswith(EVAL_PREFIX)]
        if wrong:
            raise RegistryError(f"evaluation metric {wrong[0]!r} does not start with {EVAL_PREFIX!r}; "
                                "name it eval.<split>.<metric> (e.g. eval.val.loss)")
        mv = self.get_version(version)
        now = int(time.time() * 1000)
        if mv.run_id:
            self.client.log_batch(mv.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
            for path in artifacts:
                self.client.log_artifact(mv.run_id, str(path), f"{artifact_path}/v{version}")
        for key, value in metrics.items():
            self.client.set_model_version_tag(self.model_name, str(version), key, repr(float(value)))
        log.info("%s version %s: recorded %d evaluation metrics", self.model_name, version, len(metrics))

    # --- promotion: gate, ledger, rollback -------------------------------------------------
    def promote(self, version: str | None = None, alias: str = CHAMPION, policy=None,
                force: bool = False, reason: str = "") -> Promotion:
        """Move `alias` to `version` (default: the challenger) if it passes `policy` (a
        PromotionSpec; default: the spec's default gate) against the alias's holder. Refusals move
        nothing. `force` needs a `reason`. Every decision is appended to the ledger."""
        from vap import gate
        from vap.spec import PromotionSpec

        check_alias(alias)
        if force and not reason.strip():
            raise RegistryError("--force needs --reason TEXT: the ledger records why the gate was bypassed")
        if version is None:
            version = self.version_of(CHALLENGER)
            if version is None:
                raise RegistryError(
                    f"{self.model_name} has no @{CHALLENGER} version to promote; run `vap train` or pass --version"
                )
        version = str(self.get_version(version).version)
        policy = policy or self.policy or PromotionSpec()
        with self._lock():
            previous = self.version_of(alias)
            challenger = self.version_metrics(version)
            if previous == version:  # a no-op: no gate to pass, and no rollback step to leave behind
                moved = Promotion(self.model_name, alias, version, previous, UNCHANGED, (),
                                  reason.strip() or "already the holder")
                self._append(moved, challenger, challenger, policy.model_dump(mode="json"))
                log.info("%s", moved.summary())
                return moved
            champion = self.version_metrics(previous) if previous else None
            failures = tuple(str(f) for f in gate.check(policy, challenger, champion))
            decision = FORCED if failures and force else REFUSED if failures else PROMOTED
            moved = Promotion(self.model_name, alias, version, previous, decision, failures,
                              reason.strip() or ("gate passed" if not failures else "gate failed"))
            if moved.moved:
                self.client.set_registered_model_alias(self.model_name, alias, version)
                self.client.set_model_version_tag(self.model_name, version, f"vap.promoted_to.{alias}",
                                                  f"previous={previous or 'none'} by={_who()}")
            self._append(moved, challenger, champion or {}, policy.model_dump(mode="json"))
        log.info("%s", moved.summary())
        return moved

    def rollback(self, alias: str = CHAMPION, reason: str = "") -> Promotion:
        """Point `alias` back at the version it held before its latest promotion (by the ledger)."""
        check_alias(alias)
        with self._lock():
            current = self.version_of(alias)
            entries = [e for e in self.history() if e["alias"] == alias]
            # Walk back over promotions (not rollbacks) that put the current holder there: a second
            # rollback goes one further back, like popping a stack.
            undone = [e for e in entries if e["decision"] == ROLLED_BACK]
            stack = [e for e in entries if e["decision"] in (PROMOTED, FORCED)]
            for e in undone:
                if stack and stack[-1]["version"] == e["previous"]:
                    stack.pop()
            if not stack or stack[-1]["version"] != current or not stack[-1]["previous"]:
                raise RegistryError(f"{self.model_name}@{alias} (version {current}) has no earlier holder in the "
                                    f"ledger to roll back to; use `vap promote --version N --force --reason …`")
            target = stack[-1]["previous"]
            self.get_version(target)
            self.client.set_registered_model_alias(self.model_name, alias, target)
            moved = Promotion(self.model_name, alias, target, current, ROLLED_BACK, (), reason.strip() or "rollback")
            self._append(moved, self.version_metrics(target), self.version_metrics(current), {})
        log.info("%s", moved.summary())
        return moved

    def history(self) -> list[dict]:
        """Every decision on this model, oldest first (the ledger artifacts)."""
        run = self._ledger_run(create=False)
        if run is None:
            return []
        files = sorted(f.path for f in self.client.list_artifacts(run, "ledger") if not f.is_dir)
        if not files:
            return []
        import tempfile

        from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR as BAR

        with tempfile.TemporaryDirectory() as tmp:
            was = os.environ.get(BAR.name)
            os.environ[BAR.name] = "false"  # a progress bar per ledger read would drown the history
            try:
                local = Path(self.client.download_artifacts(run, "ledger", tmp))
            finally:
                os.environ.pop(BAR.name) if was is None else os.environ.__setitem__(BAR.name, was)
            return [json.loads((local / Path(f).name).read_text()) for f in files]

    def audit(self) -> list[str]:
        """Aliases whose holder is not what the ledger's last decision left there (moved outside the gate)."""
        last: dict[str, str] = {}
        for e in self.history():
            if e["decision"] != REFUSED:
                last[e["alias"]] = e["version"]
        from mlflow.exceptions import MlflowException

        problems = []
        try:
            model = self.client.get_registered_model(self.model_name)
        except MlflowException:
            raise RegistryError(f"model {self.model_name!r} is not registered at {self.tracking_uri}; check "
                                "registry.model_name, or register a version first (`vap register --run RUN`)") from None
        aliases = dict(getattr(model, "aliases", {}) or {})
        for alias in sorted(set(last) | {a for a in aliases if a != CHALLENGER}):
            held, recorded = aliases.get(alias), last.get(alias)
            if str(held) != str(recorded):
                problems.append(f"{self.model_name}@{alias} is version {held or 'unset'} but the ledger's last decision "
                                f"left version {recorded or 'unset'}: it was moved outside `vap promote`")
        return problems

    def _append(self, moved: Promotion, challenger: dict, champion: dict, policy: dict) -> None:
        """Add one ledger entry: a new artifact (never overwritten) and a tag on the challenger version."""
        run = self._ledger_run(create=True)
        seq = len([f for f in self.client.list_artifacts(run, "ledger") if not f.is_dir]) + 1
        entry = {"seq": seq, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "who": _who(),
                 "model": self.model_name, "alias": moved.alias, "decision": moved.decision,
                 "version": moved.version, "previous": moved.previous, "reason": moved.reason,
                 "failures": list(moved.failures), "metrics": {"version": challenger, "previous": champion},
                 "policy": policy}
        self.client.log_text(run, json.dumps(entry, indent=2, sort_keys=True), f"ledger/{seq:06d}-{moved.decision}.json")
        self.client.set_model_version_tag(self.model_name, moved.version, f"vap.ledger.{seq:06d}",
                                          f"{moved.decision} {moved.alias} previous={moved.previous or 'none'} "
                                          f"by={entry['who']} at={entry['when']}: {moved.reason}"[:5000])

    def _ledger_run(self, create: bool) -> str | None:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            runs = self.client.search_runs([exp.experiment_id], f"tags.`vap.ledger` = '{self.model_name}'", max_results=1)
            if runs:
                return runs[0].info.run_id
        if not create:
            return None
        local_store = not self.tracking_uri.startswith("http")
        exp_id = exp.experiment_id if exp else self.client.create_experiment(
            self.experiment, artifact_location=self.artifact_location if local_store else None)
        run = self.client.create_run(exp_id, run_name=f"{LEDGER_RUN}-{self.model_name}", tags={"vap.ledger": self.model_name})
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    @contextlib.contextmanager
    def _lock(self, wait: float = 60.0):
        """Serialise decisions on this model across processes: a TTL lease (a crash frees it in
        `ttl` seconds) in `lock_uri`; without one, decisions in this process only."""
        from vap import lease
        from vap.errors import LeaseError

        if self.lock_uri is None:
            with _LOCAL_LOCK:
                yield
            return
        deadline = time.monotonic() + wait
        while True:
            try:
                held = lease.hold(self.lock_uri, f".vap-registry-{self.model_name}", ttl=30.0)
                held.__enter__()
                break
            except LeaseError as err:
                if time.monotonic() > deadline:
                    raise RegistryError(f"another promotion of {self.model_name} holds the lock for over {wait:.0f}s "
                                        f"({str(err).split(' since ')[0]}); retry when it is done") from None
                time.sleep(0.2 + random.random() * 0.3)
        try:
            yield
        finally:
            held.__exit__(None, None, None)


BATCH_LIMIT = 1000  # metrics per MLflow log_batch (the server refuses more)


class GuardedMetrics:
    """Per-step metrics of a long job that survive a tracking-server outage.

    `log` queues the step and sends everything queued in one batch; a failure (server down,
    timeout) keeps the queue and retries on a later call, at most every `retry_every` seconds, so
    a dead server costs a job no time and no crash. What is dropped: beyond `max_pending` queued
    steps the oldest go first, counted in `dropped` and logged; they stay in the committed
    checkpoints' history, which a resumed run re-logs. `close` tries a last time and says what is lost.
    """

    def __init__(self, registry: Registry, run_id: str, max_pending: int = 10_000, retry_every: float = 30.0):
        self.registry, self.run_id = registry, run_id
        self.max_pending, self.retry_every = max_pending, retry_every
        self.pending: list[tuple[int, int, dict]] = []  # (step, timestamp ms, values)
        self.dropped = 0
        self._failed_at: float | None = None

    def log(self, step: int, **values: float) -> bool:
        """Queue one step and try to send the queue; True when MLflow has everything."""
        self.pending.append((step, int(time.time() * 1000), dict(values)))
        if len(self.pending) > self.max_pending:
            cut = len(self.pending) - self.max_pending
            self.dropped += cut
            self.pending = self.pending[cut:]
            log.warning("tracking server unreachable: dropped the metrics of %d oldest steps (%d in all; "
                        "the committed checkpoints keep them)", cut, self.dropped)
        return self.flush()

    def flush(self, force: bool = False) -> bool:
        from mlflow.entities import Metric

        if not self.pending:
            return True
        if not force and self._failed_at is not None and time.monotonic() - self._failed_at < self.retry_every:
            return False
        sent = 0
        try:
            while self.pending:
                batch = self._next_batch()
                self.registry.client.log_batch(self.run_id, metrics=[Metric(*m) for m in batch])
                self._forget(batch)  # at once: a later batch failing must not send this one again
                sent += 1
        except Exception as err:  # noqa: BLE001 - any tracking failure: keep the queue, keep training
            if self._failed_at is None:
                log.warning("cannot log step metrics to %s (%s: %s); buffering %d steps and retrying every %.0fs",
                            self.registry.tracking_uri, type(err).__name__, str(err)[:200], len(self.pending),
                            self.retry_every)
            self._failed_at = time.monotonic()
            return False
        if self._failed_at is not None:
            log.info("tracking server back: logged the buffered steps in %d batches", sent)
        self._failed_at = None
        return True

    def _next_batch(self) -> list[tuple[str, float, int, int]]:
        """The oldest queued values, at most BATCH_LIMIT of them, as (key, value, timestamp, step)."""
        batch = []
        for step, ts, values in self.pending:
            for key, value in values.items():
                if len(batch) == BATCH_LIMIT:
                    return batch
                batch.append((key, float(value), ts, step))
        return batch

    def _forget(self, batch) -> None:
        """Drop what MLflow now holds from the queue: whole steps, and the sent keys of a split step."""
        for key, *_ in batch:
            values = self.pending[0][2]  # the batch is the queue's head, in order
            del values[key]
            if not values:
                self.pending.pop(0)

    def close(self) -> None:
        if not self.flush(force=True):
            log.error("tracking server still unreachable: the metrics of %d steps (%s..%s) are not in MLflow "
                      "(they are in the committed checkpoints)", len(self.pending), self.pending[0][0], self.pending[-1][0])


def _who() -> str:
    import socket

    from vap.lease import user_name

    return f"{user_name()}@{socket.gethostname()}"


_LOCAL_LOCK = threading.Lock()


def _params(params: dict):
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]


# --- a training run becomes a model version: the one way, at the end of `vap train` or later ----------

PENDING = "vap-registration.json"  # beside a job's checkpoints: what registering its run needs


def register_training(registry: Registry, spec, run_id: str, snapshot: str, ckpt_uri: str, metrics: dict) -> str:
    """Log the run's artifacts, log the expert's MLflow model, register it (@challenger) with its
    lineage, close the run; returns the version. What it needs is first written beside the
    checkpoints, so when the tracking server is unreachable the error says how to finish later
    (`vap register --run`) and nothing is lost."""
    from vap import storage

    job_root = storage.join(spec.storage.uri, spec.name)
    pending = storage.join(job_root, PENDING)
    storage.write_bytes(pending, json.dumps({"run_id": run_id, "snapshot": snapshot, "checkpoint_uri": ckpt_uri,
                                             "metrics": metrics}, indent=2, sort_keys=True).encode())
    later = (f"the checkpoint {ckpt_uri} is committed and nothing is lost: once the server is back, "
             f"run `vap register --run {run_id} -c <job.yaml>`")
    try:
        registry.check()
    except RegistryError as err:
        raise RegistryError(f"{err}; {later}") from None
    from mlflow.exceptions import MlflowException

    try:
        version = _register_training(registry, spec, run_id, snapshot, ckpt_uri, metrics)
    except (MlflowException, OSError) as err:  # the server went away mid-registration
        raise RegistryError(f"registering run {run_id} with {registry.tracking_uri} failed "
                            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); {later}") from None
    storage.remove(pending)
    return version


def register_run(registry: Registry, spec, run_id: str) -> str:
    """`vap register --run`: register a run whose training finished but whose registration did
    not (the tracking server was down), from what `register_training` left beside its checkpoints.
    A run registered already returns its version."""
    from vap import storage

    run = registry.client.get_run(run_id)
    if run.data.tags.get("vap.job") != spec.name:
        raise RegistryError(f"run {run_id} is job {run.data.tags.get('vap.job')!r}, not {spec.name!r}; "
                            "pass the job spec it was trained with (-c job.yaml)")
    if run.data.tags.get("vap.version"):
        log.info("run %s is registered already: version %s", run_id, run.data.tags["vap.version"])
        return run.data.tags["vap.version"]
    pending = storage.join(spec.storage.uri, spec.name, PENDING)
    if not storage.exists(pending):
        raise RegistryError(f"run {run_id} has no finished training to register ({pending} does not exist); "
                            "run `vap train -c job.yaml` to finish it (it resumes)")
    record = json.loads(storage.read_bytes(pending))
    if record["run_id"] != run_id:
        raise RegistryError(f"{pending} is for run {record['run_id']}, not {run_id}; register that run")
    return register_training(registry, spec, run_id, record["snapshot"], record["checkpoint_uri"], record["metrics"])


def _register_training(registry: Registry, spec, run_id: str, snapshot: str, ckpt_uri: str, metrics: dict) -> str:
    import tempfile

    from vap import expert_model, storage
    from vap.spec import dump_spec
    from vap.training.plots import plot_loss
    from vap.training.zero import deepspeed_config

    job_yaml = dump_spec(spec)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "job.yaml").write_text(job_yaml)
        (tmp / "deepspeed_config.json").write_text(json.dumps(deepspeed_config(spec, spec.trainer.workers), indent=2))
        plot_loss({k: registry.metric_history(run_id, k) for k in ("loss", "eval_loss")}, tmp / "loss.png")
        registry.log_artifacts(run_id, tmp)
        report = storage.join(snapshot, "report")
        if storage.exists(report):
            registry.log_artifacts(run_id, storage.materialize(report, tmp / "report"), "dataset")
        expert_uri = storage.join(ckpt_uri, "expert")
        files = expert_model.file_hashes(storage.materialize(expert_uri, tmp / "expert"))
    registry.log_metrics(run_id, 0, **{f"final_{k}": v for k, v in metrics.items() if isinstance(v, int | float)})
    run_tags = registry.client.get_run(run_id).data.tags
    lineage = {
        "run_id": run_id, "job": spec.name, "checkpoint_uri": ckpt_uri, "expert_uri": expert_uri,
        "data_snapshot": snapshot, "data_snapshot_id": snapshot.rstrip("/").rsplit("/", 1)[-1],
        "data_shards": json.loads(storage.read_bytes(storage.join(snapshot, "index.json")))["shards"],
        # the code that trained it (the run's tag), not the code registering it later
        "code_version": run_tags.get("vap.code_version") or code_version(),
        "backbone": spec.model.backbone, "backbone_revision": expert_model.backbone_revision(spec.model.backbone),
        "family": spec.model.family,
    }
    ref = {"expert_uri": expert_uri, "files": files, "backbone": spec.model.backbone,
           "backbone_revision": lineage["backbone_revision"], "family": spec.model.family,
           "defaults": expert_model.generation_defaults(spec.model.family)}
    card = expert_model.model_card(lineage, metrics, job_yaml)
    source = registry.log_expert_model(run_id, ref, card, job_yaml)
    tags = {**{k: v for k, v in lineage.items() if k != "data_shards"},
            "data_shards": _tag_value(json.dumps(lineage["data_shards"], sort_keys=True), "the model card"),
            "job_spec": _tag_value(job_yaml, "job.yaml of the run and the model"),
            "expert_files": json.dumps(files, sort_keys=True),
            **{f"metric.{k}": v for k, v in metrics.items()}}
    version = registry.register(run_id, source, tags,
                                description=f"VAP expert for {spec.model.backbone}, job {spec.name}")
    registry.log_text(run_id, card, "model_card.md")
    registry.set_tags(run_id, **{"vap.version": version, "vap.checkpoint_uri": ckpt_uri})
    registry.finish_run(run_id)
    return version


def _tag_value(text: str, where: str, limit: int = 100_000) -> str:
    """`text` when it fits a model version tag (MLflow's limit), else its digest and where it is whole."""
    import hashlib

    if len(text) <= limit:
        return text
    return f"sha256:{hashlib.sha256(text.encode()).hexdigest()} (in full in {where})"


def registry_from(config: str | Path | None, tracking_uri: str | None, model_name: str | None) -> Registry:
    """A Registry from a job spec, overridden by explicit options."""
    experiment, policy, lock_uri = "vap", None, os.environ.get("VAP_REGISTRY_LOCK_URI")
    if config is not None:
        from vap.spec import load_spec

        job = load_spec(config)
        spec = job.registry
        tracking_uri = tracking_uri or spec.tracking_uri
        model_name = model_name or spec.model_name
        experiment, policy, lock_uri = spec.experiment, spec.promotion, lock_uri or job.storage.uri
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri or not model_name:
        raise RegistryError("say which registry: --config job.yaml, or --tracking-uri and --model-name "
                            "(or MLFLOW_TRACKING_URI)")
    registry = Registry(tracking_uri, model_name, experiment, create=False, lock_uri=lock_uri)
    registry.policy = policy
    return registry


def check_alias(alias: str) -> None:
    """MLflow's rules for an alias, checked before any call (it would raise mid-promotion)."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import (
        _validate_model_alias_name,
        _validate_model_alias_name_reserved,
    )

    try:
        _validate_model_alias_name(alias)
        _validate_model_alias_name_reserved(alias)
    except MlflowException as err:
        raise RegistryError(f"alias {alias[:60]!r} is not allowed ({err.message.split('. ')[0]}); use letters, "
                            "digits, '_' and '-', not 'latest' or v<number> (e.g. --alias champion)") from None


def check_sqlite_store(uri: str, create: bool) -> None:
    """A sqlite store MLflow cannot write makes it retry for minutes and then fail with a
    SQLAlchemy traceback; a mistyped path silently creates a new, empty registry. Check first."""
    from vap.errors import StorageError
    from vap.storage import probe_writable

    path = Path(uri.removeprefix("sqlite:///"))
    if not path.exists():
        if not create:
            raise RegistryError(f"{uri}: no such MLflow database; check the path (`vap train` creates it)")
        if not path.parent.is_dir():
            raise RegistryError(f"{uri}: folder {path.parent} does not exist; create it or fix registry.tracking_uri")
    try:
        probe_writable(str(path.parent))  # sqlite writes its journal beside the database
        if path.exists():
            path.open("r+b").close()
    except (StorageError, OSError) as err:
        reason = getattr(err, "strerror", None) or str(err).split(": ", 1)[-1]
        raise RegistryError(f"{uri}: MLflow cannot write its database there ({reason}); choose a writable "
                            "folder in registry.tracking_uri (or --tracking-uri)") from None


# --- the platform chart's bootstrap hook -----------------------------------------------------------


_DB_SCHEME = re.compile(r"^(sqlite|postgresql|mysql|mssql)(\+\w+)?://")


def prepare_tracking_store(backend_uri: str, artifacts_uri: str) -> list[str]:
    """Create the artifact bucket if missing and bring the MLflow database schema up to date.

    Run by the platform chart's pre-install/pre-upgrade hook (`vap k8s prepare-tracking`), so
    the MLflow server never starts on a missing bucket or an old schema. Returns what it did.
    """
    from vap import storage

    if not _DB_SCHEME.match(backend_uri or ""):
        raise RegistryError("MLFLOW_BACKEND_STORE_URI is not a database URI (postgresql://…, mysql://…, sqlite:///…): fix the Secret it comes from")
    done = []
    loc = storage.parse_uri(artifacts_uri)
    if loc.scheme == "s3":
        client = storage.s3_client()
        try:
            client.head_bucket(Bucket=loc.bucket)
        except Exception:  # missing (404) or not visible: try to create it, which reports clearly
            try:
                client.create_bucket(Bucket=loc.bucket)
            except Exception as err:
                raise RegistryError(f"cannot create the artifact bucket s3://{loc.bucket}: {type(err).__name__}: {err}") from None
            done.append(f"created bucket s3://{loc.bucket}")
    # What `mlflow db upgrade` does (MLflow exposes it only as a CLI command).
    import mlflow.store.db.utils as db

    engine = db.create_sqlalchemy_engine_with_retry(backend_uri)
    if db._is_empty_database(engine):
        db._initialize_tables(engine)
        done.append("created the MLflow tables")
    else:
        db._upgrade_db(engine)
        done.append("upgraded the MLflow schema to the latest version")
    engine.dispose()
    for line in done:
        log.info(line)
    return done


def ledger_line(entry: dict) -> str:
    """One ledger entry as one line: seq, when, who, what, why."""
    moved = f"{entry['alias']}: {entry['previous'] or 'none'} -> {entry['version']}"
    if entry["decision"] == UNCHANGED:
        moved += " (no-op: already the holder)"
    if entry["decision"] == REFUSED:
        moved = f"{entry['alias']}: version {entry['version']} refused, stays {entry['previous'] or 'none'}"
    failed = "; ".join(entry.get("failures") or [])
    why = failed if entry["decision"] == REFUSED else f"{entry.get('reason', '')}" + (f" (gate: {failed})" if failed else "")
    return f"#{entry['seq']} {entry['when']} {entry['who']} {entry['decision']} {moved} — {why}"
