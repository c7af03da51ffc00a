"""One reconciliation of a `VAPRetrainSchedule`, as a pure function: its spec and status, the
runs it owns (RayJobs, gate Jobs) and the clock in; what to create, gate and delete, the new
status and the Events out. No API calls here: `handlers` applies the plan.

A run is one RayJob (+ its ConfigMap) and, once training succeeded, its gate Job. Its phase is
read off those objects every time (`Training`, `Trained`, `Gating`, then `Succeeded`, `Refused`
or `Failed`); `status.runs` keeps each run's last phase, so a decision (promoted, refused,
failed) is reported once, also across operator restarts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime

# FINISHED: the RayJob jobDeploymentStatus values after which it never runs again
from vap.kube.cluster import FINISHED
from vap.operators import resources as r
from vap.operators.schedule import CATCH_UP, due, schedule_problems
from vap.retrain import EVAL_SPLITS

CONCURRENCY = ("Allow", "Forbid", "Replace")
ACTIVE = ("Training", "Trained", "Gating")
SUCCEEDED, FAILED = ("Succeeded",), ("Refused", "Failed")
# What an absent spec field means: the CRD's schema defaults (the API server fills them in).
DEFAULTS = {"timeZone": "UTC", "suspend": False, "concurrencyPolicy": "Forbid", "catchUp": "Latest",
            "maxCatchUpRuns": 1, "promotion": "PromoteIfGatePasses", "successfulRunsHistoryLimit": 3,
            "failedRunsHistoryLimit": 1}


@dataclass
class Plan:
    create: list[tuple[str, str, datetime | None]] = field(default_factory=list)  # (run, trigger, tick)
    gate: list[str] = field(default_factory=list)  # runs whose training succeeded: create their gate Job
    delete: list[str] = field(default_factory=list)  # runs to delete (RayJob, ConfigMap, gate Job)
    status: dict = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (Normal|Warning, reason, message)


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def _count(value, least: int) -> bool:
    """An integer (not a bool, which YAML's `true` is) of at least `least`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def spec_problems(spec: dict) -> list[str]:
    """What the CRD's schema refuses, checked again (an API server without the schema, an old
    CRD): the schedule, its time zone and the enumerated policies."""
    problems = schedule_problems(spec.get("schedule", ""), spec["timeZone"])
    for key, allowed in (("concurrencyPolicy", CONCURRENCY), ("catchUp", CATCH_UP), ("promotion", tuple(r.POLICIES))):
        if key in spec and spec[key] not in allowed:
            problems.append(f"{key} {spec[key]!r} is unknown: use one of {', '.join(allowed)}")
    if spec.get("evaluation") is not None:
        evaluation = spec["evaluation"] or {}
        pairs, split = evaluation.get("pairs"), evaluation.get("split", "val")
        if not _count(pairs, 1):
            problems.append(f"evaluation.pairs {pairs!r}: give the number of held-out pairs to evaluate (≥ 1), "
                            "or leave evaluation out")
        if split not in EVAL_SPLITS:
            problems.append(f"evaluation.split {split!r} is unknown: use one of {', '.join(EVAL_SPLITS)}")
        deadline = evaluation.get("activeDeadlineSeconds", 60)
        if not _count(deadline, 60):
            problems.append(f"evaluation.activeDeadlineSeconds {deadline!r}: give the gate Job's deadline in seconds (≥ 60)")
    return problems


def run_phase(rayjob: dict, gate: dict | None) -> tuple[str, str]:
    """(phase, why) of one run from its RayJob's and gate Job's status."""
    name = rayjob["metadata"]["name"]
    status = rayjob.get("status") or {}
    deployment, job = status.get("jobDeploymentStatus", ""), status.get("jobStatus", "")
    if deployment not in FINISHED:
        return "Training", f"RayJob {name} is {deployment or 'pending'}"
    if job != "SUCCEEDED":
        why = status.get("message") or status.get("reason") or "no message"
        return "Failed", f"training failed: RayJob {name} ended {deployment}, job {job or 'never started'} ({why})"
    if gate is None:
        return "Trained", f"RayJob {name} succeeded"
    conditions = {c["type"]: c for c in (gate.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}
    if "Complete" in conditions:
        return "Succeeded", f"gate Job {r.gate_job_name(name)} passed"
    if "Failed" in conditions:
        failed = conditions["Failed"]
        if failed.get("reason") == "PodFailurePolicy":  # exit GATE_REFUSED_EXIT: `vap retrain --gate-only` refused it
            return "Refused", f"the gate refused run {name}: {failed.get('message') or 'see the gate Job logs'}"
        return "Failed", f"gate Job {r.gate_job_name(name)} failed ({failed.get('reason')}): {failed.get('message', '')}".rstrip(": ")
    return "Gating", f"gate Job {r.gate_job_name(name)} is running"


def set_condition(status: dict, kind: str, ok: bool, reason: str, message: str, now: datetime,
                  generation: int | None) -> bool:
    """Set one status.conditions entry (Kubernetes conventions: lastTransitionTime moves only when
    `status` flips). True when anything a reader sees changed."""
    conditions = status.setdefault("conditions", [])
    old = next((c for c in conditions if c["type"] == kind), None)
    value = "True" if ok else "False"
    new = {"type": kind, "status": value, "reason": reason, "message": message,
           "lastTransitionTime": old["lastTransitionTime"] if old and old["status"] == value else iso(now),
           "observedGeneration": generation}
    if old == new:
        return False
    status["conditions"] = [c for c in conditions if c["type"] != kind] + [new]
    return old is None or any(old.get(k) != new[k] for k in ("status", "reason", "message"))


class _Planner:
    def __init__(self, schedule: dict, now: datetime):
        self.schedule, self.now = schedule, now
        self.name = schedule["metadata"]["name"]
        self.generation = schedule["metadata"].get("generation")
        self.spec = {**DEFAULTS, **(schedule.get("spec") or {})}
        self.plan = Plan(status=copy.deepcopy(schedule.get("status") or {}))
        self.status = self.plan.status

    def decide(self, kind: str, ok: bool, reason: str, message: str, warning: bool = False, always: bool = False):
        """A condition, and an Event when it says something new (or `always`: each tick's decision)."""
        if set_condition(self.status, kind, ok, reason, message, self.now, self.generation) or always:
            self.plan.events.append(("Warning" if warning else "Normal", reason, message))

    def follow(self, rayjobs: list[dict], gates: dict[str, dict]) -> list[dict]:
        """Each run's phase from its objects; a change of phase is a decision. Returns the runs."""
        known = {run["name"]: run for run in self.status.get("runs", [])}
        runs = []
        for rayjob in sorted(rayjobs, key=lambda o: o["metadata"]["name"]):
            meta = meta_of(rayjob)
            name = meta["name"]
            phase, why = run_phase(rayjob, gates.get(r.gate_job_name(name)))
            run = known.pop(name, None) or {"name": name, "trigger": meta.get("labels", {}).get(r.TRIGGER_LABEL, "schedule"),
                                            "tick": meta.get("annotations", {}).get(r.TICK_ANNOTATION)}
            if run.get("phase") != phase:
                self._report(run, phase, why)
            run.update(phase=phase, message=why)
            if phase == "Trained":
                self.plan.gate.append(name)
            runs.append(run)
        # A finished run whose objects are gone stays in the history until pruned; an unfinished one was deleted.
        runs += [run for run in known.values() if run.get("phase") in SUCCEEDED + FAILED]
        order = {run["name"]: i for i, run in enumerate(self.status.get("runs", []))}
        return sorted(runs, key=lambda run: order.get(run["name"], len(order)))

    def _report(self, run: dict, phase: str, why: str):
        if phase in SUCCEEDED:
            promote = self.spec["promotion"] == "PromoteIfGatePasses"
            self.decide("Promoted", True, "Promoted" if promote else "Registered",
                        f"run {run['name']}: {'promoted through the gate' if promote else 'registered, @champion not moved'}",
                        always=True)
            self.status["lastSuccessfulTime"] = iso(self.now)
        elif phase == "Refused":
            self.decide("Promoted", False, "GateRefused", why, warning=True, always=True)
        elif phase == "Failed":
            self.decide("Promoted", False, "RunFailed", why, warning=True, always=True)

    def candidates(self) -> list[tuple[str, str, datetime | None]]:
        """The runs the triggers ask for now (oldest first); moves the tick cursor and digest."""
        spec, status, out = self.spec, self.status, []
        triggers = spec.get("triggers") or {}
        if triggers.get("schedule", True):
            last = parse_time(status.get("lastScheduleTime")) or parse_time(
                self.schedule["metadata"].get("creationTimestamp")) or self.now
            found = due(spec["schedule"], spec["timeZone"], last, self.now, spec["catchUp"],
                        spec["maxCatchUpRuns"], spec.get("startingDeadlineSeconds"))
            if found.newest:
                status["lastScheduleTime"] = iso(found.newest)
            if found.expired:
                self.decide("Scheduled", False, "MissedDeadline",
                            f"{len(found.expired)} tick(s) missed by more than startingDeadlineSeconds "
                            f"({spec.get('startingDeadlineSeconds')} s), not run: {', '.join(map(iso, found.expired[-3:]))}",
                            warning=True, always=True)
            if found.skipped:
                self.decide("Scheduled", False, "CatchUpSkipped",
                            f"{len(found.skipped)} missed tick(s) not run by catchUp {spec['catchUp']}: "
                            f"{', '.join(map(iso, found.skipped[-3:]))}", always=True)
            out += [(r.run_name(self.name, t), "schedule", t) for t in found.run]
        return out

    def data_candidate(self, digest: str | None, error: str | None) -> list[tuple[str, str, datetime | None]]:
        if not (self.spec.get("triggers") or {}).get("dataChange"):
            return []
        if error or not digest:  # said once, not dropped: the trigger is blind until the source lists again
            self.decide("DataWatched", False, "SourceUnreadable",
                        f"dataChange trigger cannot list the data source: {error or 'no digest'}", warning=True)
            return []
        self.decide("DataWatched", True, "SourceListed", "dataChange trigger: the data source lists")
        previous, self.status["lastDigest"] = self.status.get("lastDigest"), digest
        if previous is None or previous == digest:  # the first digest seen is the baseline
            return []
        return [(r.data_run_name(self.name, digest), "data", None)]

    def admit(self, wanted: list, runs: list[dict]):
        """concurrencyPolicy over the runs the triggers want."""
        existing = {run["name"] for run in runs}
        wanted = [w for w in wanted if w[0] not in existing]  # found already: a restart, or the same digest
        if not wanted:
            return
        active = [run["name"] for run in runs if run["phase"] in ACTIVE]
        policy = self.spec["concurrencyPolicy"]
        what = lambda w: f"tick {iso(w[2])}" if w[2] else "new data"  # noqa: E731
        if policy == "Forbid":
            start = [] if active else wanted[-1:]
            for w in wanted:
                if w not in start:
                    blocker = active[0] if active else start[0][0]
                    self.decide("Scheduled", False, "ForbiddenConcurrent",
                                f"{what(w)} skipped: concurrencyPolicy Forbid and run {blocker} is still running",
                                warning=True, always=True)
        replaced = []
        if policy == "Replace":
            start, replaced = wanted[-1:], active
            self.plan.delete += replaced
            runs[:] = [run for run in runs if run["name"] not in replaced]
        elif policy == "Allow":
            start = wanted
        for name, trigger, tick in start:
            self.plan.create.append((name, trigger, tick))
            runs.append({"name": name, "trigger": trigger, "tick": iso(tick) if tick else None,
                         "phase": "Training", "message": "created"})
            message = f"started run {name} for {what((name, trigger, tick))}"
            if replaced:
                self.decide("Scheduled", True, "Replaced", f"{message}; concurrencyPolicy Replace deleted the "
                            f"running {', '.join(replaced)}", warning=True, always=True)
            else:
                self.decide("Scheduled", True, "Fired" if trigger == "schedule" else "DataChanged", message, always=True)

    def prune(self, runs: list[dict]):
        """Keep the newest successfulRunsHistoryLimit / failedRunsHistoryLimit finished runs."""
        doomed = []
        for phases, key in ((SUCCEEDED, "successfulRunsHistoryLimit"), (FAILED, "failedRunsHistoryLimit")):
            done = [run["name"] for run in runs if run["phase"] in phases]
            doomed += done[:max(0, len(done) - int(self.spec[key]))]
        if doomed:
            self.plan.delete += doomed
            runs[:] = [run for run in runs if run["name"] not in doomed]
            self.plan.events.append(("Normal", "Pruned", f"history limits: deleted finished run(s) {', '.join(doomed)}"))


def meta_of(obj: dict) -> dict:
    return obj.get("metadata") or {}


def plan(schedule: dict, rayjobs: list[dict], gates: dict[str, dict], now: datetime,
         digest: str | None = None, problems: list[str] = (), digest_error: str | None = None) -> Plan:
    """Everything one reconciliation decides. `problems`: what is wrong with the job spec (it
    could not be read or validated); with any problem, or the schedule's own, nothing is created."""
    p = _Planner(schedule, now)
    runs = p.follow(rayjobs, gates)
    problems = spec_problems(p.spec) + list(problems)
    if problems:
        p.decide("Valid", False, "InvalidSpec", "; ".join(problems) + " — nothing is created until it is fixed",
                 warning=True)
    else:
        p.decide("Valid", True, "SpecValid", "schedule, policies and job spec are valid")
        suspended = bool(p.spec["suspend"])
        wanted = p.candidates() + p.data_candidate(digest, digest_error)  # both move their cursors while suspended too
        p.decide("Suspended", suspended, "Suspended" if suspended else "NotSuspended",
                 "spec.suspend is true: no run starts (ticks pass unrun)" if suspended else "runs start on their triggers")
        if not suspended:
            p.admit(wanted, runs)
    p.prune(runs)
    active = [run["name"] for run in runs if run["phase"] in ACTIVE]
    p.decide("Active", bool(active), "RunsActive" if active else "Idle",
             f"running: {', '.join(active)}" if active else "no run in progress")
    p.status.update(runs=runs, active=active, observedGeneration=p.generation)
    return p.plan
