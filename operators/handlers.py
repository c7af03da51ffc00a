"""The kopf wiring of `VAPRetrainSchedule`: one timer per schedule is its only reconciler.

    kopf run --standalone --namespace vap --liveness http://0.0.0.0:8080/healthz -m vap.operators.handlers

The timer fires when a schedule appears (or the operator starts) and every INTERVAL seconds:
creating, changing and resuming a schedule are handled by its next run, so two handlers never
race over one status. Each run reads the job spec, the schedule's owned objects and the clock,
asks `reconcile.plan` what to do, does it (`cluster.Cluster`), then writes `status` and the
Events. Everything it needs next time is in `status` and in the objects' deterministic names.

What the handlers use comes from kopf's `memo` (tests inject their own): `cluster`, `clock`,
`source_digest` (the data-change trigger) and `health` (the liveness probe's heartbeat).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from datetime import UTC, datetime

import kopf

from vap.errors import DataError, VapError
from vap.kube.values import values_from_spec
from vap.operators import reconcile
from vap.operators import resources as r
from vap.operators.cluster import Cluster, api_client
from vap.spec import parse_spec

INTERVAL = float(os.environ.get("VAP_OPERATOR_INTERVAL", "30"))  # ≤ half of schedule.ON_TIME
STALE = 10 * INTERVAL  # no reconcile finished, or a heartbeat not back, for this long: not alive
HEARTBEAT = STALE / 2  # how often each schedule's status.watchHeartbeat is bumped


def source_digest(job_spec: dict) -> str:
    """Digest of the files under the job's data root: the listing (name, size, mtime or S3 ETag)
    that `vap data build` trusts to find an unchanged source. DataError when it cannot be listed."""
    from vap.datasets import build
    from vap.datasets.ingest import find_manifest

    spec = parse_spec(job_spec, source="jobSpec")
    try:
        listing = build._listing(build._data_root(spec, find_manifest(spec.data.source)))
    except VapError:
        raise
    except Exception as err:  # botocore, network, permissions: the trigger is blind, the schedule runs on
        raise DataError(f"{spec.data.source}: cannot list it ({type(err).__name__}: {err})") from None
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_):
    # One namespace, one known CRD: no listing of namespaces or CRDs (the Role grants neither).
    settings.scanning.disabled = True
    settings.posting.level = logging.WARNING  # kopf's own logs become Events from WARNING on; decisions are ours
    # A watch stream that goes silent is closed and reopened instead of hanging forever.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    if "cluster" not in memo:
        memo.cluster = Cluster(api_client())
    memo.setdefault("clock", lambda: datetime.now(UTC))
    memo.setdefault("source_digest", source_digest)
    memo.setdefault("health", {"schedules": set(), "last": time.monotonic()})


@kopf.on.probe(id="reconciling")
def alive(memo: kopf.Memo, **_):
    """kopf's --liveness endpoint: fails (HTTP 500, the pod restarts) when schedules exist but no
    reconcile has finished for STALE seconds (a wedged API client), or when a status heartbeat
    the operator wrote has not come back through the watch stream for STALE seconds (a dead
    stream: kopf hands each timer the body its watch last delivered, and would go on
    reconciling a stale spec forever)."""
    now = time.monotonic()
    age = now - memo.health["last"]
    if memo.health["schedules"] and age > STALE:
        raise kopf.PermanentError(f"no schedule reconciled for {age:.0f} s (limit {STALE:.0f} s)")
    lost = {key: now - written for key, (_, written) in memo.health.get("unechoed", {}).items() if now - written > STALE}
    if lost:
        (ns, name), waited = max(lost.items(), key=lambda kv: kv[1])
        raise kopf.PermanentError(f"the watch stream has not delivered {ns}/{name}'s status.watchHeartbeat, written "
                                  f"{waited:.0f} s ago (limit {STALE:.0f} s): the watch is dead")
    return f"last reconcile {age:.0f} s ago"


def _heartbeat(health: dict, key: tuple[str, str], seen: dict, status: dict) -> None:
    """Bump status.watchHeartbeat every HEARTBEAT seconds, once the last bump came back in a body
    the watch stream delivered (`seen`: the status kopf handed the timer); `alive` reads the rest."""
    unechoed, echoed = health.setdefault("unechoed", {}), health.setdefault("echoed", {})
    now, beat = time.monotonic(), int(seen.get("watchHeartbeat") or 0)
    if key in unechoed and beat >= unechoed[key][0]:
        del unechoed[key]
        echoed[key] = now
    if key not in unechoed and now - echoed.get(key, float("-inf")) >= HEARTBEAT:
        unechoed[key] = (beat + 1, now)
    if key in unechoed:  # the status below is a stale body's: it must not write the old beat back
        status["watchHeartbeat"] = unechoed[key][0]


@kopf.on.delete(r.GROUP, r.VERSION, r.PLURAL, optional=True)
def forget(namespace, name, memo: kopf.Memo, **_):
    """Nothing to clean up (owner references do); the probe stops expecting this schedule."""
    memo.health["schedules"].discard((namespace, name))
    for waiting in (memo.health.get("unechoed", {}), memo.health.get("echoed", {})):
        waiting.pop((namespace, name), None)


@kopf.timer(r.GROUP, r.VERSION, r.PLURAL, interval=INTERVAL, initial_delay=0)
def reconcile_schedule(body, patch, memo: kopf.Memo, logger, **_):
    schedule = copy.deepcopy(dict(body))
    meta = schedule["metadata"]
    ns, name = meta["namespace"], meta["name"]
    cluster: Cluster = memo.cluster
    memo.health["schedules"].add((ns, name))
    job_spec, problems = _job_spec(cluster, schedule)
    wants_digest = not problems and (schedule["spec"].get("triggers") or {}).get("dataChange")
    digest, digest_error = None, None
    if wants_digest:
        try:
            digest = memo.source_digest(job_spec)
        except VapError as err:
            digest_error = str(err)
    rayjobs, gates = cluster.owned(ns, name)
    now = memo.clock()
    plan = reconcile.plan(schedule, rayjobs, gates, now, digest, problems, digest_error)

    for run in plan.delete:
        cluster.delete_run(ns, name, run)
    policy = schedule["spec"].get("promotion", reconcile.DEFAULTS["promotion"])
    for run in plan.gate:
        cluster.create_gate(r.gate_job(next(o for o in rayjobs if o["metadata"]["name"] == run), policy,
                                       schedule["spec"].get("evaluation")))
    for run, trigger, tick in plan.create:
        try:
            cluster.create_run(r.run_objects(schedule, job_spec, run, trigger, tick))
        except VapError as err:  # the chart refused the values: report it, keep the run out of status
            _drop(plan, run, now, f"run {run} not created: {err}")

    _heartbeat(memo.health, (ns, name), schedule.get("status") or {}, plan.status)
    patch.status.update(plan.status)
    for kind, reason, message in plan.events:
        kopf.event(body, type=kind, reason=reason, message=message)
        logger.info("%s: %s", reason, message)
    memo.health["last"] = time.monotonic()


def _job_spec(cluster: Cluster, schedule: dict) -> tuple[dict, list[str]]:
    """The schedule's job spec, and what keeps it from running on the cluster (checked each time,
    before anything is created: the same checks `vap k8s submit` makes, without rendering)."""
    spec, name = schedule["spec"], schedule["metadata"]["name"]
    try:
        job_spec = cluster.job_spec(schedule["metadata"]["namespace"], spec)
        parsed = parse_spec({**job_spec, "name": r.run_name(name, datetime(2000, 1, 1))},
                            source=f"{r.KIND} {name} job spec")
        values_from_spec(parsed, spec.get("values") or {}, image=spec.get("image"))
    except VapError as err:
        return {}, [str(err)]
    return job_spec, []


def _drop(plan: reconcile.Plan, run: str, now: datetime, message: str) -> None:
    status = plan.status
    status["runs"] = [x for x in status["runs"] if x["name"] != run]
    status["active"] = [x for x in status["active"] if x != run]
    reconcile.set_condition(status, "Valid", False, "RenderFailed", message, now, status.get("observedGeneration"))
    plan.events.append(("Warning", "RenderFailed", message))
