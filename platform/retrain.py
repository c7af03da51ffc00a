"""`vap retrain`: one idempotent retraining cycle — data → snapshot → training job → gate.

What a scheduled run executes, on a cluster and on one machine:

1. build the snapshot of `data.source` (a no-op that finds the last one when the source is
   unchanged: `vap.datasets.build` keys it by the source listing and by content);
2. train the job `<spec name>-<model name>-<digest>`: a name derived from the spec, the model it
   registers and the data, so a repeated cycle on the same data resumes that job, or finds it
   finished and trains nothing, and two specs training different models on one snapshot never
   share a job (its checkpoints, its MLflow run);
3. evaluate: the metrics recorded on the registered version (the trainer's held-out eval loss,
   `metric.eval_loss`), and with `eval_pairs` `vap eval` of the version on that many held-out
   pairs first (its `eval.<split>.*`, which `registry.promotion` can require; skipped when the
   version carries them already, so a repeated cycle does not generate again);
4. per policy, register only, or promote through the registry's gate (`Registry.promote` under
   the spec's `registry.promotion`, the same call as `vap promote`, so the decision is in the
   ledger).

It returns a `Cycle` that says what it decided and why.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from vap.errors import RegistryError
from vap.registry import CHAMPION, Registry
from vap.spec import JobSpec

log = logging.getLogger(__name__)

Policy = Literal["register", "promote"]
POLICIES = ("register", "promote")
EVAL_SPLITS = ("val", "unseen")  # vap.evaluation.evaluate.SPLITS, without importing torch here


def job_name(spec_name: str, model_name: str, snapshot_id: str) -> str:
    """`<spec name>-<model name>-<8 hex>`: a valid job name (≤ 42 characters), the same for the
    same spec, model and data, so a repeated cycle resumes or no-ops. The hex digests all three,
    so names that truncation or lowercasing would merge stay apart."""
    digest = hashlib.sha256("\0".join((spec_name, model_name, snapshot_id)).encode()).hexdigest()[:8]
    model = re.sub(r"[^a-z0-9]+", "-", model_name.lower()).strip("-")  # registry names allow _ . A-Z
    readable = f"{spec_name}-{model}"[:33].rstrip("-")
    return f"{readable}-{digest}"


@dataclass
class Cycle:
    """What one cycle did and why (also what `vap retrain` prints)."""

    job: str
    snapshot: str
    data_changed: bool
    trained: bool  # False: the job had finished before this cycle
    version: str
    decision: Literal["promoted", "registered", "refused", "unchanged"]
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # what the gate read on the candidate
    champion_metrics: dict[str, float] = field(default_factory=dict)  # … and on @champion

    def summary(self) -> str:
        head = f"{self.decision}: job {self.job}, snapshot {self.snapshot}, version {self.version}"
        return "\n".join([head, *(f"  - {r}" for r in self.reasons)])

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def retrain(spec: JobSpec, policy: Policy = "promote", *, build: Callable | None = None,
            train: Callable | None = None, registry: Registry | None = None, eval_pairs: int | None = None,
            eval_split: str = "val", evaluate: Callable | None = None) -> Cycle:
    """One cycle (see the module docstring). `build(spec) -> Snapshot`, `train(spec) ->
    TrainResult` and `evaluate` default to `vap.datasets.build.build_snapshot`,
    `vap.training.trainer.train` and `vap.evaluation.evaluate.evaluate`."""
    _check(policy, eval_pairs, eval_split)
    if build is None:
        from vap.datasets.build import build_snapshot as build
    if train is None:
        from vap.training.trainer import train
    if registry is None:
        from vap import storage

        registry = Registry(spec.registry.tracking_uri, spec.registry.model_name, spec.registry.experiment,
                            artifact_location=storage.join(spec.storage.uri, "mlflow-artifacts"),
                            lock_uri=spec.storage.uri)
    reasons = []
    snapshot = build(spec)
    data_changed = not snapshot.reused
    reasons.append(f"data: snapshot {snapshot.id} " + ("built from new data" if data_changed else "unchanged, reused"))

    job = job_name(spec.name, spec.registry.model_name, snapshot.id)
    job_spec = spec.model_copy(update={"name": job, "data": spec.data.model_copy(update={"snapshot": snapshot.id})})
    before = registry.find_run(job)
    finished = before is not None and before.info.status == "FINISHED" and bool(before.data.tags.get("vap.version"))
    result = train(job_spec)
    reasons.append(f"train: job {job} " + ("had finished already: not trained again" if finished else
                                            f"trained, registered version {result.version}"))
    cycle = Cycle(job, snapshot.id, data_changed, not finished, result.version, "registered", reasons)

    if eval_pairs:
        _evaluate(registry, job_spec, cycle, eval_pairs, eval_split, evaluate)
    _decide(registry, cycle, policy, spec.registry.promotion)
    for line in reasons:
        log.info("retrain %s: %s", job, line)
    return cycle


def _check(policy: str, eval_pairs: int | None, eval_split: str) -> None:
    """Refuse a bad policy or evaluation before any work."""
    if policy not in POLICIES:
        raise RegistryError(f"promotion policy {policy!r} is unknown: use one of {', '.join(POLICIES)}")
    if eval_pairs is not None and eval_pairs < 1:
        raise RegistryError(f"eval pairs {eval_pairs}: evaluate at least 1 pair, or leave it out to skip evaluation")
    if eval_split not in EVAL_SPLITS:
        raise RegistryError(f"eval split {eval_split!r} is unknown: use one of {', '.join(EVAL_SPLITS)}")


def _evaluate(registry: Registry, spec: JobSpec, cycle: Cycle, pairs: int, split: str, evaluate: Callable | None) -> None:
    """`vap eval` of the cycle's version on `pairs` held-out pairs of `split`, recorded on the
    version (eval.<split>.*) before the gate reads it; not again when the version has them."""
    prefix = f"eval.{split}."
    model = f"models:/{spec.registry.model_name}/{cycle.version}"
    if any(k.startswith(prefix) for k in registry.version_metrics(cycle.version)):
        cycle.reasons.append(f"eval: version {cycle.version} carries {prefix}* already: not evaluated again")
        return
    if evaluate is None:
        from vap.evaluation.evaluate import evaluate
    evaluate(spec, model, split, pairs, record=True, progress=False)
    cycle.reasons.append(f"eval: {model} on {pairs} {split} pair(s), {prefix}* recorded on the version")


def _decide(registry: Registry, cycle: Cycle, policy: Policy, policy_spec) -> None:
    """Register only, or promote through the gate; the decision and its reason go into `cycle`."""
    reasons = cycle.reasons
    if registry.version_of(CHAMPION) == cycle.version:
        cycle.decision = "unchanged"
        reasons.append(f"registry: version {cycle.version} is @{CHAMPION} already")
    elif policy == "register":
        reasons.append("policy: register only; @champion not moved")
    else:
        champion = registry.version_of(CHAMPION)
        cycle.metrics = registry.version_metrics(cycle.version)
        cycle.champion_metrics = registry.version_metrics(champion) if champion else {}
        decision = registry.promote(cycle.version, CHAMPION, policy=policy_spec)
        cycle.decision = "promoted" if decision.moved else "refused"
        reasons.append(f"gate {'passed' if decision.moved else 'refused'}: {decision.summary()}")


def gate_trained(spec: JobSpec, policy: Policy = "promote", registry: Registry | None = None, *,
                 eval_pairs: int | None = None, eval_split: str = "val", evaluate: Callable | None = None) -> Cycle:
    """The last steps alone, for a job trained elsewhere (the operator's RayJob): find job
    `spec.name`'s registered version, evaluate it (with `eval_pairs`, on the snapshot it trained
    on), then register only or promote through the gate."""
    _check(policy, eval_pairs, eval_split)
    registry = registry or Registry(spec.registry.tracking_uri, spec.registry.model_name, spec.registry.experiment,
                                    lock_uri=spec.storage.uri)
    run = registry.find_run(spec.name)
    version = run.data.tags.get("vap.version") if run is not None else None
    if run is None or run.info.status != "FINISHED" or not version:
        raise RegistryError(f"job {spec.name} has no finished run with a registered version at "
                            f"{spec.registry.tracking_uri}: train it first (vap train --config …)")
    cycle = Cycle(spec.name, run.data.tags.get("vap.snapshot", ""), False, False, version, "registered",
                  [f"train: job {spec.name} finished, version {version}"])
    if eval_pairs:
        trained_on = spec.model_copy(update={"data": spec.data.model_copy(update={"snapshot": cycle.snapshot})}) \
            if cycle.snapshot else spec
        _evaluate(registry, trained_on, cycle, eval_pairs, eval_split, evaluate)
    _decide(registry, cycle, policy, spec.registry.promotion)
    return cycle
