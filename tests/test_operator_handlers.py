"""The real kopf operator (`vap.operators.handlers`) against an in-memory Kubernetes API (kmock),
with an injected clock: ticks fire, runs are followed to their gate, concurrency policies,
restarts and downtime, suspend, the data trigger, pruning, a malformed schedule, a job spec from
a ConfigMap and the liveness probe (a dead watch stream is a muted one). Every request the
operator makes is checked against the chart's operator Role (`api` fixture).

kmock stores and serves objects but is no API server: it assigns no uid, creationTimestamp or
generation (`ApiServer` below does, as the API server would), ignores label selectors (the
operator filters again; `test_other_schedules_runs_are_not_adopted`), never garbage-collects
(the operator deletes a run's objects itself) and has no resourceVersion conflicts (the
operator writes status by merge patch, never by update). KubeRay and the Job controller are the
test: it writes the RayJob's and the gate Job's status.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from datetime import UTC, datetime, timedelta

import kmock
import kopf
import kubernetes
import pytest
import pytest_asyncio
import yaml
from conftest import REPO

os.environ["VAP_OPERATOR_INTERVAL"] = "0.2"  # before the handlers are imported: a fast timer
from vap.operators import handlers  # noqa: E402
from vap.operators import resources as r  # noqa: E402
from vap.errors import VapError  # noqa: E402
from vap.operators.cluster import Cluster  # noqa: E402

NS = "vap"
SCHEDULES, RAYJOBS, JOBS = "vap.dev/v1alpha1/vapretrainschedules", "ray.io/v1/rayjobs", "batch/v1/jobs"
CONFIGMAPS, EVENTS = "v1/configmaps", "v1/events"
JOB_SPEC = yaml.safe_load((REPO / "examples" / "cluster.yaml").read_text())
T0 = datetime(2027, 1, 1, 2, 59, tzinfo=UTC)  # schedules are created then; "0 3 * * *" fires at 03:00
pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio]


class ApiServer(kmock.KubernetesEmulator):
    """kmock plus what the API server sets on its own: uid, creationTimestamp, resourceVersion,
    generation (bumped by a spec change), names from generateName, 201 on create. (resourceVersion never moves:
    kmock has no write conflicts to emulate.)"""

    now: datetime = T0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.verbs: set[tuple[str, str, str]] = set()  # (API group, resource[/subresource], RBAC verb) requested

    watch_muted = False  # True: open watch streams deliver nothing more (a dead stream that never closes)

    async def _serve_watch(self, request):
        async for item in super()._serve_watch(request):
            if not self.watch_muted:
                yield item

    def _record(self, request):
        if request.resource is None or request.resource.plural is None:  # discovery (/api, /apis): granted to all
            return
        if request.headers.get("User-Agent") == USER_AGENT:  # the test acting as a user, not the operator
            return
        method, named = request.method.value, request.name is not None
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(method) or (
            "watch" if request.params.get("watch") in ("true", "1") else "get" if named else "list")
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        self.verbs.add((request.resource.group or "", resource, verb))

    async def _handle(self, request):
        self._record(request)
        if request.resource is not None and request.action in (kmock.action.CREATE, kmock.action.UPDATE):
            data = request.data if isinstance(request.data, dict) else {}
            meta = data.setdefault("metadata", {}) if data else {}
            if request.action == kmock.action.CREATE:
                if "generateName" in meta and "name" not in meta:
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", self.now.strftime("%Y-%m-%dT%H:%M:%SZ"))
                meta.setdefault("generation", 1)
                meta.setdefault("resourceVersion", "1")
            elif request.name and "spec" in data:
                old = self.objects[request.resource, request.namespace, request.name].raw
                meta["generation"] = old["metadata"].get("generation", 1) + 1
        response = await super()._handle(request)
        if request.action == kmock.action.CREATE and response.status == 200:
            response.set_status(201)  # the API server's answer to a create (the client reads only 201's body)
        return response


URL: list[str] = []
USER_AGENT = "kubectl (a user in the test)"


def user_api() -> kubernetes.client.CustomObjectsApi:
    """What a user's kubectl does to schedules (not checked against the operator's Role)."""
    client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=URL[-1]))
    client.user_agent = USER_AGENT
    return kubernetes.client.CustomObjectsApi(client)


def _role_grants() -> set[tuple[str, str, str]]:
    """(API group, resource, verb) of the platform chart's operator Role, as rendered."""
    from vap import kube

    values = yaml.safe_load((kube.PLATFORM_CHART / "ci" / "operator-values.yaml").read_text())
    objects = kube.parse_manifests(kube.render(values, "vap-platform", NS, kube.PLATFORM_CHART))
    [role] = [o for o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("-operator")]
    return {(g, res, verb) for rule in role["rules"] for g in rule["apiGroups"] for res in rule["resources"]
            for verb in rule["verbs"]}


ROLE_GRANTS = _role_grants()


@kopf.on.login()
def _login(**_):
    return kopf.ConnectionInfo(server=URL[-1])


@pytest_asyncio.fixture
async def api():
    server = ApiServer()
    info = dict(namespaced=True, verbs={"list", "watch", "get", "create", "patch", "update", "delete"})
    server.resources[SCHEDULES] = kmock.ResourceInfo(kind=r.KIND, subresources={"status"}, **info)
    # kopf discovers these two before it starts (it lists neither with scanning disabled)
    server.resources["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False, verbs={"list", "watch"})
    server.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
        kind="CustomResourceDefinition", namespaced=False, verbs={"list", "watch"})
    for res, kind in ((RAYJOBS, "RayJob"), (JOBS, "Job"), (CONFIGMAPS, "ConfigMap"), (EVENTS, "Event")):
        server.resources[res] = kmock.ResourceInfo(kind=kind, **info)
    async with server, kmock.Server(server) as srv:
        URL.append(str(srv.url))
        yield server
    # every request the operator made is one the chart's Role grants (a missing verb is a 403 on a cluster)
    denied = sorted(v for v in server.verbs if v not in ROLE_GRANTS)
    assert not denied, f"requests the operator Role does not grant (charts/vap-platform/templates/operator/rbac.yaml): {denied}"


class Operator:
    """`kopf.operator` with the test's clock and data digest, in a thread of its own (kopf cancels
    the tasks its loop did not start with when it stops: the test's own among them)."""

    def __init__(self, server: ApiServer):
        self.server, self.digest, self.thread = server, None, None

    def clock(self):
        return self.server.now

    def source_digest(self, job_spec):
        if isinstance(self.digest, Exception):
            raise self.digest
        return self.digest

    async def start(self):
        client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=URL[-1]))
        memo = self.memo = kopf.Memo(cluster=Cluster(client), clock=self.clock, source_digest=self.source_digest)
        self.stop_flag = threading.Event()
        run = kopf.operator(standalone=True, namespaces=[NS], stop_flag=self.stop_flag, memo=memo,
                            registry=kopf.get_default_registry())
        self.thread = threading.Thread(target=asyncio.run, args=(run,), daemon=True)
        self.thread.start()

    async def stop(self):
        self.stop_flag.set()
        await asyncio.get_running_loop().run_in_executor(None, self.thread.join, 30)
        assert not self.thread.is_alive(), "the operator did not stop"


@pytest_asyncio.fixture
async def operator(api):
    op = Operator(api)
    await op.start()
    yield op
    if op.thread.is_alive():
        await op.stop()


def objects(server, res) -> list[dict]:
    return [o.raw for (rs, _, _), o in server.objects.items() if rs == kmock.resource(res) and not o.deleted]


def schedule_of(server, name="nightly") -> dict:
    return server.objects[kmock.resource(SCHEDULES), NS, name].raw


def condition(server, kind, name="nightly") -> dict:
    return next((c for c in (schedule_of(server, name).get("status") or {}).get("conditions", []) if c["type"] == kind), {})


async def until(check, timeout=30.0):
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not reached in {timeout} s: {check.__doc__ or check}")


async def fired(server, run="nightly-202701010300"):
    """The operator created `run` and wrote that decision to status."""
    await until(lambda: run in condition(server, "Scheduled").get("message", ""))


async def settle(seconds=1.0):
    """Several timer periods pass (each one a full reconcile)."""
    await asyncio.sleep(seconds)


def create_schedule(server, name="nightly", **spec):
    body = {"apiVersion": r.API_VERSION, "kind": r.KIND, "metadata": {"name": name, "namespace": NS},
            "spec": {k: v for k, v in {"schedule": "0 3 * * *", "timeZone": "UTC", "jobSpec": JOB_SPEC, **spec}.items()
                     if v is not None}}  # None: leave the field out
    server.objects[kmock.resource(SCHEDULES), NS, name] = {
        **body, "metadata": {**body["metadata"], "uid": f"uid-{name}", "generation": 1, "resourceVersion": "1",
                             "creationTimestamp": server.now.strftime("%Y-%m-%dT%H:%M:%SZ")}}


def set_status(server, res, name, status):
    server.objects[kmock.resource(res), NS, name].patch({"status": status})


def event_reasons(server) -> list[str]:
    return [e["reason"] for e in objects(server, EVENTS)]


TRAINED = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
REFUSED = {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                           "message": "Container gate for failed with exit code 3 matching FailJob rule at index 0"}]}
PASSED = {"conditions": [{"type": "Complete", "status": "True"}]}


@pytest.mark.parametrize("gate_status,ok,reason", [(PASSED, True, "Promoted"), (REFUSED, False, "GateRefused")],
                         ids=["gate-passes", "gate-refuses"])
async def test_a_tick_runs_one_rayjob_then_its_gate_then_reports(api, operator, gate_status, ok, reason):
    create_schedule(api)
    await settle()
    assert objects(api, RAYJOBS) == [], "fired before its tick"
    api.now = T0 + timedelta(minutes=1, seconds=10)  # 03:00:10
    await until(lambda: objects(api, CONFIGMAPS) and condition(api, "Scheduled"))
    await settle()
    [rayjob] = objects(api, RAYJOBS)  # exactly one, however many reconciles ran
    assert rayjob["metadata"]["name"] == "nightly-202701010300"
    assert rayjob["metadata"]["ownerReferences"][0]["uid"] == "uid-nightly"
    assert rayjob["spec"]["entrypoint"] == "vap train --config /etc/vap/job.yaml"
    [cm] = objects(api, CONFIGMAPS)
    assert cm["metadata"]["ownerReferences"][0]["uid"] == rayjob["metadata"]["uid"]
    assert condition(api, "Scheduled")["reason"] == "Fired" and condition(api, "Active")["status"] == "True"
    assert objects(api, JOBS) == [], "gated before training finished"

    set_status(api, RAYJOBS, "nightly-202701010300", TRAINED)  # KubeRay: the job succeeded
    await until(lambda: objects(api, JOBS))
    [gate] = objects(api, JOBS)
    assert gate["metadata"]["name"] == "nightly-202701010300-gate"
    assert gate["spec"]["template"]["spec"]["containers"][0]["command"][-3:] == ["--gate-only", "--policy", "promote"]
    set_status(api, JOBS, gate["metadata"]["name"], gate_status)
    await until(lambda: condition(api, "Promoted"))
    promoted = condition(api, "Promoted")
    assert (promoted["status"] == "True") is ok and promoted["reason"] == reason
    assert promoted["observedGeneration"] == 1 and promoted["lastTransitionTime"]
    assert "nightly-202701010300" in promoted["message"]
    await until(lambda: reason in event_reasons(api))
    await until(lambda: condition(api, "Active").get("status") == "False")
    assert schedule_of(api)["status"]["observedGeneration"] == 1


async def test_register_only_with_evaluation_gates_with_those_arguments(api, operator):
    create_schedule(api, promotion="RegisterOnly", evaluation={"pairs": 6, "split": "unseen"})
    api.now = T0 + timedelta(minutes=1, seconds=10)
    await fired(api)
    set_status(api, RAYJOBS, "nightly-202701010300", TRAINED)
    await until(lambda: objects(api, JOBS))
    [gate] = objects(api, JOBS)
    assert gate["spec"]["template"]["spec"]["containers"][0]["command"][-7:] == [
        "--gate-only", "--policy", "register", "--eval-pairs", "6", "--eval-split", "unseen"]
    set_status(api, JOBS, gate["metadata"]["name"], PASSED)
    await until(lambda: condition(api, "Promoted"))
    promoted = condition(api, "Promoted")
    assert promoted["reason"] == "Registered" and "@champion not moved" in promoted["message"]
    await until(lambda: "Registered" in event_reasons(api))


async def test_failed_training_is_never_gated(api, operator):
    create_schedule(api)
    api.now = T0 + timedelta(minutes=1, seconds=10)
    await fired(api)
    set_status(api, RAYJOBS, "nightly-202701010300", {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED",
                                                      "message": "worker OOMKilled"})
    await until(lambda: condition(api, "Promoted"))
    assert condition(api, "Promoted")["reason"] == "RunFailed" and "OOMKilled" in condition(api, "Promoted")["message"]
    await until(lambda: any(e["reason"] == "RunFailed" and e["type"] == "Warning" and "OOMKilled" in e["message"]
                            for e in objects(api, EVENTS)))
    await settle()
    assert objects(api, JOBS) == []


@pytest.mark.parametrize("policy", ["Allow", "Forbid", "Replace"])
async def test_concurrency_policy_with_a_run_still_training(api, operator, policy):
    create_schedule(api, schedule="*/5 * * * *", concurrencyPolicy=policy)
    api.now = T0 + timedelta(minutes=1, seconds=10)  # 03:00:10
    await fired(api)
    api.now += timedelta(minutes=5)  # 03:05:10, the first run still training
    await until(lambda: "03:05" in condition(api, "Scheduled")["message"] or "0305" in condition(api, "Scheduled")["message"])
    await settle()
    names = sorted(o["metadata"]["name"] for o in objects(api, RAYJOBS))
    first, second = "nightly-202701010300", "nightly-202701010305"
    assert names == {"Allow": [first, second], "Forbid": [first], "Replace": [second]}[policy]
    scheduled = condition(api, "Scheduled")
    assert scheduled["reason"] == {"Allow": "Fired", "Forbid": "ForbiddenConcurrent", "Replace": "Replaced"}[policy]
    await until(lambda: scheduled["reason"] in event_reasons(api))  # each decision is an Event too
    if policy == "Forbid":
        assert first in scheduled["message"] and scheduled["status"] == "False"
    if policy == "Replace":
        assert [c["metadata"]["name"] for c in objects(api, CONFIGMAPS)] == [f"{second}-spec"]


async def test_a_restarted_operator_follows_its_run_and_creates_no_second_one(api, operator):
    create_schedule(api)
    api.now = T0 + timedelta(minutes=1, seconds=10)
    await until(lambda: objects(api, RAYJOBS))
    await operator.stop()
    # the worst case: the status write was lost between creating the RayJob and patching status
    api.objects[kmock.resource(SCHEDULES), NS, "nightly"].patch({"status": {"runs": None, "lastScheduleTime": None}})
    api.now += timedelta(seconds=30)
    await operator.start()
    await until(lambda: (schedule_of(api).get("status") or {}).get("runs"))
    await settle()
    assert [o["metadata"]["name"] for o in objects(api, RAYJOBS)] == ["nightly-202701010300"]
    assert [run["name"] for run in schedule_of(api)["status"]["runs"]] == ["nightly-202701010300"]
    set_status(api, RAYJOBS, "nightly-202701010300", TRAINED)
    await until(lambda: objects(api, JOBS))  # followed to its gate by the new process


async def test_suspend_starts_nothing_and_conditions_follow_the_generation(api, operator):
    create_schedule(api)
    await until(lambda: condition(api, "Suspended").get("status") == "False")
    client = user_api()
    await asyncio.get_running_loop().run_in_executor(None, lambda: client.patch_namespaced_custom_object(
        r.GROUP, r.VERSION, NS, r.PLURAL, "nightly", {"spec": {"suspend": True}}))  # a user's kubectl patch
    await until(lambda: condition(api, "Suspended").get("status") == "True")
    assert condition(api, "Suspended")["observedGeneration"] == 2 == schedule_of(api)["status"]["observedGeneration"]
    api.now = T0 + timedelta(minutes=1, seconds=10)  # the tick passes while suspended
    await settle()
    assert objects(api, RAYJOBS) == [] and objects(api, CONFIGMAPS) == []
    assert "Suspended" in event_reasons(api)


async def test_a_deleted_schedule_is_no_longer_expected_by_the_liveness_probe(api, operator):
    create_schedule(api)
    await until(lambda: (NS, "nightly") in operator.memo.get("health", {}).get("schedules", ()))
    client = user_api()
    await asyncio.get_running_loop().run_in_executor(None, lambda: client.delete_namespaced_custom_object(
        r.GROUP, r.VERSION, NS, r.PLURAL, "nightly"))  # a user's kubectl delete (no finalizer holds it)
    await until(lambda: (NS, "nightly") not in operator.memo.health["schedules"])
    assert handlers.alive(memo=kopf.Memo(health={**operator.memo.health, "last": handlers.time.monotonic() - handlers.STALE - 1}))


async def test_liveness_fails_when_the_watch_stream_goes_silent(api, operator):
    """Timers go on with the body the watch last delivered; the heartbeat shows the stream is dead."""
    create_schedule(api)
    await until(lambda: (schedule_of(api).get("status") or {}).get("watchHeartbeat", 0) >= 3)  # written and echoed
    assert handlers.alive(memo=operator.memo).startswith("last reconcile")
    api.watch_muted = True
    beat = schedule_of(api)["status"]["watchHeartbeat"]

    def probe_fails():
        try:
            handlers.alive(memo=operator.memo)
        except kopf.PermanentError as err:
            return "the watch is dead" in str(err) and "vap/nightly" in str(err)
        return False
    await until(probe_fails)
    assert schedule_of(api)["status"]["watchHeartbeat"] == beat + 1, "one bump, then it waits for the echo"
    assert time_since(operator.memo.health["last"]) < handlers.STALE, "reconciles went on: only the watch died"


def time_since(monotonic: float) -> float:
    return handlers.time.monotonic() - monotonic


async def test_liveness_fails_when_reconciles_stop():
    fresh = kopf.Memo(health={"schedules": {(NS, "nightly")}, "last": handlers.time.monotonic()})
    assert handlers.alive(memo=fresh).startswith("last reconcile")
    stale = kopf.Memo(health={"schedules": {(NS, "nightly")}, "last": handlers.time.monotonic() - handlers.STALE - 1})
    with pytest.raises(kopf.PermanentError, match="no schedule reconciled"):
        handlers.alive(memo=stale)
    stale.health["schedules"].clear()  # nothing to reconcile: nothing is late
    assert handlers.alive(memo=stale)


async def test_new_data_digest_starts_a_run(api, operator):
    create_schedule(api, schedule="0 3 1 1 *", triggers={"schedule": False, "dataChange": True})
    operator.digest = VapError("s3://vap-data/raw: cannot list it (EndpointConnectionError: ...)")  # storage down
    await until(lambda: condition(api, "DataWatched").get("reason") == "SourceUnreadable")
    assert "s3://vap-data/raw: cannot list it" in condition(api, "DataWatched")["message"]
    await until(lambda: "SourceUnreadable" in event_reasons(api))
    assert objects(api, RAYJOBS) == []
    operator.digest = "a" * 64
    await until(lambda: (schedule_of(api).get("status") or {}).get("lastDigest"))
    await settle()
    assert objects(api, RAYJOBS) == [], "the first digest seen is the baseline"
    operator.digest = "b" * 64
    await until(lambda: condition(api, "Scheduled").get("reason") == "DataChanged")  # created, and status written
    await settle()
    assert [o["metadata"]["name"] for o in objects(api, RAYJOBS)] == ["nightly-dbbbbbbbbbbbb"]
    assert objects(api, RAYJOBS)[0]["metadata"]["labels"][r.TRIGGER_LABEL] == "data"
    assert condition(api, "Scheduled")["reason"] == "DataChanged" and condition(api, "DataWatched")["status"] == "True"


async def test_history_limits_prune_old_runs_and_their_objects(api, operator):
    create_schedule(api, schedule="0 * * * *", successfulRunsHistoryLimit=1, failedRunsHistoryLimit=1)
    for hour, gate in ((0, PASSED), (1, PASSED), (2, REFUSED), (3, REFUSED)):
        name = f"nightly-20270101{hour:02d}00"
        api.objects[kmock.resource(RAYJOBS), NS, name] = {
            "apiVersion": "ray.io/v1", "kind": "RayJob", "status": TRAINED,
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "labels": {r.SCHEDULE_LABEL: "nightly"}}}
        api.objects[kmock.resource(CONFIGMAPS), NS, f"{name}-spec"] = {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {
                "name": f"{name}-spec", "namespace": NS, "labels": {r.SCHEDULE_LABEL: "nightly"},
                "ownerReferences": [{"apiVersion": "ray.io/v1", "kind": "RayJob", "name": name, "uid": f"uid-{name}"}]}}
        api.objects[kmock.resource(JOBS), NS, f"{name}-gate"] = {
            "apiVersion": "batch/v1", "kind": "Job", "status": gate,
            "metadata": {"name": f"{name}-gate", "namespace": NS, "labels": {r.SCHEDULE_LABEL: "nightly"}}}
    await until(lambda: "Pruned" in event_reasons(api))
    await settle()
    assert sorted(o["metadata"]["name"] for o in objects(api, RAYJOBS)) == ["nightly-202701010100", "nightly-202701010300"]
    assert sorted(o["metadata"]["name"] for o in objects(api, CONFIGMAPS)) == ["nightly-202701010100-spec", "nightly-202701010300-spec"]
    assert sorted(o["metadata"]["name"] for o in objects(api, JOBS)) == ["nightly-202701010100-gate", "nightly-202701010300-gate"]
    assert [run["name"] for run in schedule_of(api)["status"]["runs"]] == ["nightly-202701010100", "nightly-202701010300"]


async def test_other_schedules_runs_are_not_adopted(api, operator):
    """kmock ignores label selectors: the operator's own filter keeps schedules apart."""
    api.objects[kmock.resource(RAYJOBS), NS, "other-202701010300"] = {
        "apiVersion": "ray.io/v1", "kind": "RayJob", "status": {"jobDeploymentStatus": "Running"},
        "metadata": {"name": "other-202701010300", "namespace": NS, "uid": "u", "labels": {r.SCHEDULE_LABEL: "other"}}}
    create_schedule(api, concurrencyPolicy="Forbid")
    api.now = T0 + timedelta(minutes=1, seconds=10)
    await until(lambda: condition(api, "Scheduled"))
    assert condition(api, "Scheduled")["reason"] == "Fired" and len(objects(api, RAYJOBS)) == 2


@pytest.mark.parametrize("spec,needle", [({"schedule": "every day"}, "not a 5-field cron"),
                                         ({"concurrencyPolicy": "Sometimes"}, "concurrencyPolicy 'Sometimes' is unknown"),
                                         ({"jobSpec": {**JOB_SPEC, "storage": {"uri": "/tmp/runs"}}}, "storage.uri"),
                                         ({"jobSpecFrom": {"configMapKeyRef": {"name": "retrain-spec"}}},
                                          "both jobSpec and jobSpecFrom: keep one"),
                                         ({"evaluation": {"pairs": 0}}, "evaluation.pairs 0"),
                                         ({"evaluation": {"pairs": 2, "activeDeadlineSeconds": "1h"}},
                                          "evaluation.activeDeadlineSeconds '1h'")],
                         ids=["cron", "policy", "job-spec", "two-job-specs", "evaluation", "gate-deadline"])
async def test_a_malformed_schedule_is_reported_and_creates_nothing(api, operator, spec, needle):
    create_schedule(api, **spec)
    api.now = T0 + timedelta(minutes=1, seconds=10)
    await until(lambda: condition(api, "Valid"))
    await settle()
    valid = condition(api, "Valid")
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec" and needle in valid["message"]
    assert objects(api, RAYJOBS) == [] and objects(api, CONFIGMAPS) == []
    assert "InvalidSpec" in event_reasons(api)


async def test_creating_a_run_twice_uses_the_first(api):
    """409 AlreadyExists (a create racing a restart, a stale list) is the existing object, not an error."""
    cluster = Cluster(kubernetes.client.ApiClient(kubernetes.client.Configuration(host=URL[-1])))
    create_schedule(api)
    run = r.run_objects(schedule_of(api), JOB_SPEC, "nightly-202701010300", "schedule", T0)
    loop = asyncio.get_running_loop()
    first = await loop.run_in_executor(None, cluster.create_run, run)
    again = await loop.run_in_executor(None, cluster.create_run, r.run_objects(schedule_of(api), JOB_SPEC,
                                                                                 "nightly-202701010300", "schedule", T0))
    assert again["metadata"]["uid"] == first["metadata"]["uid"]
    assert len(objects(api, RAYJOBS)) == 1 and len(objects(api, CONFIGMAPS)) == 1
    for _ in range(2):  # the gate Job likewise
        await loop.run_in_executor(None, cluster.create_gate, r.gate_job(first, "PromoteIfGatePasses"))
    assert [o["metadata"]["name"] for o in objects(api, JOBS)] == ["nightly-202701010300-gate"]


async def test_missed_ticks_after_downtime_run_as_the_catch_up_policy_says(api, operator):
    create_schedule(api, schedule="0 * * * *", catchUp="All", maxCatchUpRuns=3, concurrencyPolicy="Allow")
    await settle()
    api.now = T0 + timedelta(hours=10, minutes=31)  # 13:30: 11 hourly ticks, 03:00 … 13:00, passed unseen
    await until(lambda: condition(api, "Scheduled").get("reason") == "Fired" and len(objects(api, RAYJOBS)) == 3)
    await settle()
    assert sorted(o["metadata"]["name"] for o in objects(api, RAYJOBS)) == [
        "nightly-202701011100", "nightly-202701011200", "nightly-202701011300"]  # the newest 3, never 11
    assert "CatchUpSkipped" in event_reasons(api)


async def test_a_time_zone_schedule_fires_at_wall_clock_time_across_dst(api, operator):
    api.now = datetime(2027, 3, 27, 12, tzinfo=UTC)
    create_schedule(api, schedule="30 3 * * *", timeZone="Europe/Berlin")
    await settle()
    api.now = datetime(2027, 3, 28, 1, 30, 5, tzinfo=UTC)  # 03:30 CEST, the first day of summer time
    await fired(api, "nightly-202703280130")
    assert [o["metadata"]["name"] for o in objects(api, RAYJOBS)] == ["nightly-202703280130"]


async def test_ticks_past_the_starting_deadline_are_reported_and_never_run(api, operator):
    create_schedule(api, schedule="0 * * * *", catchUp="All", maxCatchUpRuns=5, startingDeadlineSeconds=600,
                    concurrencyPolicy="Allow")
    await settle()
    api.now = T0 + timedelta(hours=3, minutes=31)  # 06:30: 03:00, 04:00, 05:00 and 06:00 are all > 10 min late
    await until(lambda: condition(api, "Scheduled").get("reason") == "MissedDeadline")
    await settle()
    scheduled = condition(api, "Scheduled")
    assert scheduled["status"] == "False" and "4 tick(s) missed by more than startingDeadlineSeconds (600 s)" in scheduled["message"]
    assert objects(api, RAYJOBS) == [] and "MissedDeadline" in event_reasons(api)
    api.now = T0 + timedelta(hours=4, minutes=1, seconds=10)  # 07:00:10: on time again
    await fired(api, "nightly-202701010700")
    assert [o["metadata"]["name"] for o in objects(api, RAYJOBS)] == ["nightly-202701010700"]


def put_job_spec_configmap(server, steps, key="job.yaml", name="retrain-spec"):
    """A user's `kubectl create configmap retrain-spec --from-file=job.yaml`."""
    server.objects[kmock.resource(CONFIGMAPS), NS, name] = {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}"},
        "data": {key: yaml.safe_dump({**JOB_SPEC, "trainer": {**JOB_SPEC["trainer"], "steps": steps}})}}


def trained_steps(server, run) -> int:
    """The steps of the job spec a run's RayJob mounts (its ConfigMap's job.yaml)."""
    rayjob = server.objects[kmock.resource(RAYJOBS), NS, run].raw
    volumes = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"]  # the driver's pod
    [mounted] = [v["configMap"]["name"] for v in volumes if "configMap" in v]
    cm = server.objects[kmock.resource(CONFIGMAPS), NS, mounted].raw
    return yaml.safe_load(cm["data"]["job.yaml"])["trainer"]["steps"]


async def test_a_job_spec_from_a_configmap_is_read_at_each_run(api, operator):
    put_job_spec_configmap(api, steps=2000)
    create_schedule(api, schedule="0 * * * *", concurrencyPolicy="Allow", jobSpec=None,
                    jobSpecFrom={"configMapKeyRef": {"name": "retrain-spec", "key": "job.yaml"}})
    api.now = T0 + timedelta(minutes=1, seconds=10)  # 03:00:10
    await fired(api)
    assert condition(api, "Valid")["status"] == "True"
    assert trained_steps(api, "nightly-202701010300") == 2000
    put_job_spec_configmap(api, steps=3000)  # the user edits the ConfigMap: the next run trains on it
    api.now += timedelta(hours=1)
    await fired(api, "nightly-202701010400")
    assert trained_steps(api, "nightly-202701010400") == 3000
    assert trained_steps(api, "nightly-202701010300") == 2000, "a run keeps the spec it started with"


@pytest.mark.parametrize("present,needle", [(False, "ConfigMap vap/retrain-spec does not exist: create it or fix the name"),
                                            (True, "ConfigMap vap/retrain-spec has no key 'job.yaml' (keys: spec.yaml)")],
                         ids=["no-configmap", "no-key"])
async def test_a_missing_job_spec_configmap_is_reported_and_creates_nothing(api, operator, present, needle):
    if present:
        put_job_spec_configmap(api, steps=2000, key="spec.yaml")
    create_schedule(api, jobSpec=None, jobSpecFrom={"configMapKeyRef": {"name": "retrain-spec", "key": "job.yaml"}})
    api.now = T0 + timedelta(minutes=1, seconds=10)
    await until(lambda: condition(api, "Valid"))
    await settle()
    valid = condition(api, "Valid")
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec" and needle in valid["message"]
    assert objects(api, RAYJOBS) == [] and [c["metadata"]["name"] for c in objects(api, CONFIGMAPS)] == (
        ["retrain-spec"] if present else [])
    assert any(e["reason"] == "InvalidSpec" and needle in e["message"] for e in objects(api, EVENTS))
    put_job_spec_configmap(api, steps=2000)  # the fix: the operator was running all along and picks it up
    await until(lambda: condition(api, "Valid").get("status") == "True")
    await fired(api)
    assert trained_steps(api, "nightly-202701010300") == 2000


async def test_an_operator_down_for_hours_runs_only_the_latest_missed_tick(api, operator):
    """catchUp Latest (the default) across a real stop and start: the cursor is in status."""
    create_schedule(api, schedule="0 * * * *", concurrencyPolicy="Allow")
    api.now = T0 + timedelta(minutes=1, seconds=10)  # 03:00:10
    await fired(api)
    await operator.stop()
    api.now = T0 + timedelta(hours=6, minutes=31)  # 09:30: 04:00 … 09:00 passed while it was down
    await operator.start()
    await fired(api, "nightly-202701010900")
    await settle()
    assert sorted(o["metadata"]["name"] for o in objects(api, RAYJOBS)) == ["nightly-202701010300", "nightly-202701010900"]
    assert any(e["reason"] == "CatchUpSkipped" and e["message"].startswith("5 missed tick(s)") for e in objects(api, EVENTS))


async def test_the_data_digest_follows_the_source_listing(tmp_path):
    """The real `source_digest` (the dataChange trigger) on a local source: stable while nothing
    changes, new when a clip is added or rewritten, an error naming it when it cannot be listed."""
    raw = tmp_path / "raw"
    (raw / "clips").mkdir(parents=True)
    (raw / "metadata.csv").write_text("video,caption,condition,category\nclips/a.mp4,a cat,dolly zoom,camera\n")
    (raw / "clips" / "a.mp4").write_bytes(b"a" * 10)
    job = {**JOB_SPEC, "data": {**JOB_SPEC["data"], "source": str(raw), "shards": str(tmp_path / "shards")},
           "storage": {"uri": str(tmp_path / "runs")}, "registry": {**JOB_SPEC["registry"], "tracking_uri": "http://mlflow:5000"}}
    first = handlers.source_digest(job)
    assert first is not None and len(first) == 64 and handlers.source_digest(job) == first
    (raw / "clips" / "b.mp4").write_bytes(b"b" * 10)  # new data arrives
    second = handlers.source_digest(job)
    assert second not in (None, first)
    (raw / "clips" / "b.mp4").write_bytes(b"c" * 12)  # a clip is replaced
    assert handlers.source_digest(job) not in (None, first, second)
    with pytest.raises(VapError, match="nowhere: no such folder"):
        handlers.source_digest({**job, "data": {**job["data"], "source": str(tmp_path / "nowhere")}})
