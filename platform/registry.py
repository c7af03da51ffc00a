"""The one place that talks to MLflow: runs, metrics, artifacts, model versions, aliases.

A trained expert becomes a model version whose `source` is the expert folder inside its
checkpoint (object storage), tagged with its lineage (run, data snapshot, backbone, code
version). New versions get alias `challenger`; `promote` moves `champion` and records who held
it before, so a rollback is one more `promote`.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from vap.errors import RegistryError

log = logging.getLogger(__name__)

CHALLENGER, CHAMPION = "challenger", "champion"


@dataclass(frozen=True)
class Promotion:
    model_name: str
    alias: str
    version: str
    previous: str | None

    def summary(self) -> str:
        was = f"(was version {self.previous})" if self.previous else "(new alias)"
        return f"{self.model_name}@{self.alias} -> version {self.version} {was}"


def code_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Registry:
    def __init__(self, tracking_uri: str, model_name: str, experiment: str = "vap",
                 artifact_location: str | None = None, create: bool = True):
        from vap.spec import parse_tracking_uri

        self.tracking_uri = parse_tracking_uri(tracking_uri)
        self.create = create  # False: a sqlite database must exist already (a mistyped path is an error)
        self.model_name = model_name
        self.experiment = experiment
        # Only used when this client creates the experiment against a local store; a tracking
        # server chooses (and proxies) its own artifact store.
        self.artifact_location = artifact_location
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
        self.client.set_terminated(run_id, status)

    # --- model versions and aliases -------------------------------------------------------
    def register(self, run_id: str, source: str, tags: dict, description: str = "") -> str:
        """Register `source` (the expert folder in the checkpoint) as a new version → challenger."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException:
            self.client.create_registered_model(self.model_name, description="VAP experts (MoT) by training run")
        mv = self.client.create_model_version(self.model_name, source=source, run_id=run_id,
                                              tags={k: str(v) for k, v in tags.items()}, description=description)
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

    def promote(self, version: str | None = None, alias: str = CHAMPION) -> Promotion:
        """Point `alias` at `version` (default: the challenger); tag the version with the audit trail."""
        check_alias(alias)
        if version is None:
            version = self.version_of(CHALLENGER)
            if version is None:
                raise RegistryError(
                    f"{self.model_name} has no @{CHALLENGER} version to promote; run `vap train` or pass --version"
                )
        self.get_version(version)  # exists?
        previous = self.version_of(alias)
        self.client.set_registered_model_alias(self.model_name, alias, version)
        self.client.set_model_version_tag(self.model_name, version, f"vap.promoted_to.{alias}",
                                          f"previous={previous or 'none'} by={os.environ.get('USER', 'unknown')}")
        log.info("%s@%s: %s -> %s", self.model_name, alias, previous, version)
        return Promotion(self.model_name, alias, str(version), previous)


def _params(params: dict):
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]


def registry_from(config: str | Path | None, tracking_uri: str | None, model_name: str | None) -> Registry:
    """A Registry from a job spec, overridden by explicit options."""
    experiment = "vap"
    if config is not None:
        from vap.spec import load_spec

        spec = load_spec(config).registry
        tracking_uri = tracking_uri or spec.tracking_uri
        model_name = model_name or spec.model_name
        experiment = spec.experiment
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri or not model_name:
        raise RegistryError("say which registry: --config job.yaml, or --tracking-uri and --model-name "
                            "(or MLFLOW_TRACKING_URI)")
    return Registry(tracking_uri, model_name, experiment, create=False)


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
