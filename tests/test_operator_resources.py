"""The operator's objects: deterministic run names, the RayJob rendered by vap.kube (strictly
validated) and owned by the schedule, the gate Job owned by the RayJob."""

from datetime import UTC, datetime

import yaml
from conftest import REPO

from vap import kube
from vap.operators import resources as r

TICK = datetime(2027, 1, 1, 3, tzinfo=UTC)
SCHEDULE = {"apiVersion": r.API_VERSION, "kind": r.KIND,
            "metadata": {"name": "nightly", "namespace": "vap", "uid": "uid-schedule"},
            "spec": {"values": {"mlflow": {"credentialsSecret": {"name": "mlflow-basic-auth"}}}}}


def test_names_are_deterministic_and_fit_kubernetes():
    assert r.run_name("nightly", TICK) == "nightly-202701010300" == r.run_name("nightly", TICK)
    assert len(r.gate_job_name(r.run_name("x" * 63, TICK))) <= 63
    assert r.data_run_name("nightly", "abcdef0123456789") == "nightly-dabcdef012345"


def test_run_objects_are_the_train_charts_with_owner_and_tick():
    job_spec = yaml.safe_load((REPO / "examples" / "cluster.yaml").read_text())
    objects = r.run_objects(SCHEDULE, job_spec, r.run_name("nightly", TICK), "schedule", TICK)
    rayjob = next(o for o in objects if o["kind"] == "RayJob")
    assert rayjob["metadata"]["name"] == "nightly-202701010300"
    assert rayjob["metadata"]["ownerReferences"][0]["uid"] == "uid-schedule"
    assert rayjob["metadata"]["annotations"][r.TICK_ANNOTATION] == TICK.isoformat()
    assert rayjob["spec"]["entrypoint"] == "vap train --config /etc/vap/job.yaml"
    kube.validate(objects)  # strictly, as sent: the owner reference is a metadata field KubeRay's schema allows
    broken = {**rayjob, "metadata": {**rayjob["metadata"], "ownerReferences": [{"kind": r.KIND, "name": "nightly"}]}}
    assert any("'apiVersion' is a required property" in p for p in kube.object_problems(broken))
    spec_cm = next(o for o in objects if o["kind"] == "ConfigMap")
    assert yaml.safe_load(spec_cm["data"]["job.yaml"])["name"] == "nightly-202701010300"

    rayjob["metadata"]["uid"] = "uid-rayjob"
    gate = r.gate_job(rayjob, "PromoteIfGatePasses")
    kube.validate([gate])  # strict: unknown fields are errors
    assert gate["metadata"]["ownerReferences"][0]["uid"] == "uid-rayjob"
    [container] = gate["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[-3:] == ["--gate-only", "--policy", "promote"]
    # what `vap retrain --gate-only` needs in its pod: the run's job spec where --config points,
    # and the credentials of the storage (the registry's lock) and of MLflow
    config = command[command.index("--config") + 1]
    [mount] = [m for m in container["volumeMounts"] if config.startswith(m["mountPath"] + "/")]
    [volume] = [v for v in gate["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == spec_cm["metadata"]["name"] and config.endswith("/job.yaml")
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "vap-s3"
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-basic-auth"
    assert "ports" not in container and gate["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert r.gate_job(rayjob, "RegisterOnly")["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "register"

    gpu = {"limits": {"nvidia.com/gpu": 1, "memory": "64Gi"}, "requests": {"nvidia.com/gpu": 1, "memory": "64Gi"}}
    evaluating = r.gate_job(rayjob, "PromoteIfGatePasses", {"pairs": 8, "split": "unseen", "resources": gpu})
    kube.validate([evaluating])
    [container] = evaluating["spec"]["template"]["spec"]["containers"]
    assert container["command"][-7:] == ["--gate-only", "--policy", "promote", "--eval-pairs", "8", "--eval-split", "unseen"]
    assert container["resources"] == gpu and gate["spec"]["activeDeadlineSeconds"] == r.GATE_DEADLINE_S
    longer = r.gate_job(rayjob, "PromoteIfGatePasses", {"pairs": 800, "activeDeadlineSeconds": 6 * 3600})
    assert longer["spec"]["activeDeadlineSeconds"] == 6 * 3600
    assert r.gate_job(rayjob, "RegisterOnly", {"pairs": 2})["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == [
        "--eval-split", "val"]


def test_an_evaluating_gate_on_a_gpu_goes_where_the_gpu_workers_go():
    job_spec = yaml.safe_load((REPO / "examples" / "cluster.yaml").read_text())
    pools = {"workers": {"replicas": 1, "gpusPerPod": 8, "nodeSelector": {"pool": "a100"},
                         "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
             "head": {"nodeSelector": {"pool": "cpu"}}}
    schedule = {**SCHEDULE, "spec": {"values": pools}}
    objects = r.run_objects(schedule, job_spec, r.run_name("nightly", TICK), "schedule", TICK)
    rayjob = next(o for o in objects if o["kind"] == "RayJob")
    rayjob["metadata"]["uid"] = "uid-rayjob"
    gpu = {"limits": {"nvidia.com/gpu": 1}, "requests": {"nvidia.com/gpu": 1}}
    on_gpu = r.gate_job(rayjob, "PromoteIfGatePasses", {"pairs": 8, "resources": gpu})["spec"]["template"]["spec"]
    kube.validate([r.gate_job(rayjob, "PromoteIfGatePasses", {"pairs": 8, "resources": gpu})])
    assert on_gpu["nodeSelector"] == {"pool": "a100"} and on_gpu["tolerations"] == pools["workers"]["tolerations"]
    on_cpu = r.gate_job(rayjob, "PromoteIfGatePasses", {"pairs": 8})["spec"]["template"]["spec"]
    assert on_cpu["nodeSelector"] == {"pool": "cpu"} and "tolerations" not in on_cpu  # the head's
