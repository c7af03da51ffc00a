"""The Helm charts: lint, render several value sets, validate every object offline (built-in
kinds at Kubernetes 1.34, RayJob against the vendored KubeRay v1.7.0 CRDs with unknown fields
as errors), checkov with 0 failed checks, pods secure by default, bad values refused clearly."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from vap import kube
from vap.spec import parse_spec

REPO = Path(__file__).resolve().parents[1]
TRAIN, PLATFORM = kube.TRAIN_CHART, kube.PLATFORM_CHART
CHECKOV = REPO / ".tools" / "checkov" / "bin" / "checkov"
SKIPS = yaml.safe_load((REPO / "charts" / "checkov-skips.yaml").read_text())

# value set name → values file of vap-train (None: the chart's defaults)
TRAIN_SETS = {"defaults": None, "cpu": TRAIN / "ci" / "cpu-values.yaml", "gpu16": TRAIN / "ci" / "gpu16-values.yaml"}
PLATFORM_SETS = {"defaults": None, "minio": PLATFORM / "ci" / "minio-values.yaml"}
CREDENTIAL_NAME = re.compile(r"(?i)secret|password|token|access_key|credential")


def _values(path: Path | None) -> dict:
    return yaml.safe_load(path.read_text()) if path else {}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    """Each value set rendered in its own namespace; every training namespace also gets the
    platform chart (its NetworkPolicies cover the training pods)."""
    out = {}
    for name, path in TRAIN_SETS.items():
        ns = f"vap-{name}"
        objs = kube.parse_manifests(kube.render(_values(path), f"run-{name}", ns, TRAIN))
        objs += kube.parse_manifests(kube.render({}, "vap-platform", ns, PLATFORM))
        out[f"train-{name}"] = objs
    out["platform-minio"] = kube.parse_manifests(
        kube.render(_values(PLATFORM_SETS["minio"]), "vap-platform", "vap-minio", PLATFORM))
    return out


def _all(rendered) -> list[dict]:
    return [obj for objs in rendered.values() for obj in objs]


def _containers(template: dict) -> list[dict]:
    return template["spec"].get("initContainers", []) + template["spec"]["containers"]


@pytest.mark.parametrize("chart,values", [(TRAIN, p) for p in TRAIN_SETS.values()] + [(PLATFORM, p) for p in PLATFORM_SETS.values()],
                         ids=[f"train-{n}" for n in TRAIN_SETS] + [f"platform-{n}" for n in PLATFORM_SETS])
def test_helm_lint_strict(chart, values):
    cmd = [kube.tool("helm"), "lint", "--strict", str(chart)] + (["--values", str(values)] if values else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_every_rendered_object_is_valid(rendered):
    objects = _all(rendered)
    kinds = {o["kind"] for o in objects}
    assert {"RayJob", "ConfigMap", "Deployment", "Service", "Job", "NetworkPolicy", "Role", "RoleBinding", "ServiceAccount"} <= kinds
    kube.validate(objects)  # raises KubeError listing every bad field


def test_validation_refuses_unknown_and_mistyped_fields(rendered):
    rayjob = next(o for o in rendered["train-cpu"] if o["kind"] == "RayJob")
    bad = copy.deepcopy(rayjob)
    bad["spec"]["shutdownAfterJobFinish"] = True  # typo the API server would silently prune
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    bad["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    problems = kube.object_problems(bad)
    assert len(problems) == 3, problems
    joined = "\n".join(problems)
    assert "'shutdownAfterJobFinish' was unexpected" in joined
    assert "spec.rayClusterSpec.workerGroupSpecs[0].replicas" in joined
    assert "headGroupSpec.template.spec.containers[0]" in joined and "securityContxt" in joined
    deployment = copy.deepcopy(next(o for o in rendered["train-cpu"] if o["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    deployment["spec"]["replicaz"] = 1
    assert kube.object_problems(deployment), "a built-in kind with bad fields passed"
    with pytest.raises(kube.KubeError, match=r"RayJob/run-cpu: spec: .*shutdownAfterJobFinish"):
        kube.validate([bad])


def _scan_documents(rendered) -> list[dict]:
    """The rendered objects plus, for each RayJob, the Pods KubeRay will create from its
    templates (checkov does not look inside custom resources)."""
    docs = []
    for objs in rendered.values():
        for obj in objs:
            meta = obj["metadata"]
            images = [c["image"] for _, t in kube.pod_templates(obj) for c in _containers(t)]
            skips = dict(SKIPS["tag-pinned"]) if any("@sha256:" not in i for i in images) else {}
            if obj["kind"] == "Deployment" and meta["labels"].get("app.kubernetes.io/component") == "operator":
                skips.update(SKIPS["operator"])
            docs.append(_annotate(obj, skips))
            if obj["kind"] != "RayJob":
                continue
            for where, template in kube.pod_templates(obj):
                pod = {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {**copy.deepcopy(template["metadata"]), "name": f"{meta['name']}-{where.split()[-1]}",
                                    "namespace": meta["namespace"]},
                       "spec": copy.deepcopy(template["spec"])}
                docs.append(_annotate(pod, {**skips, **SKIPS["ray-pods"]}))
    return docs


def _annotate(obj: dict, skips: dict[str, str]) -> dict:
    """checkov's per-resource skips: `checkov.io/skipN: CHECK=reason` annotations."""
    obj = copy.deepcopy(obj)
    notes = obj["metadata"].setdefault("annotations", {})
    for i, (check, reason) in enumerate(sorted(skips.items()), 1):
        notes[f"checkov.io/skip{i}"] = f"{check}={' '.join(reason.split())[:200]}"
    return obj


def test_checkov_finds_nothing_beyond_documented_skips(rendered, tmp_path):
    assert CHECKOV.exists(), "checkov missing: run `make setup` (tools/install-k8s-tools.sh installs it)"
    for group in SKIPS.values():
        for check, reason in group.items():
            assert re.fullmatch(r"CKV2?_K8S_\d+", check) and len(reason.split()) >= 8, f"{check}: write down why it is skipped"
    report = _checkov(_scan_documents(rendered), tmp_path)
    results = report["results"]
    failed = [f"{r['check_id']} {r['resource']}" for r in results["failed_checks"]]
    assert failed == [], "checkov failures:\n" + "\n".join(failed)
    assert report["summary"]["passed"] > 300
    # the digest-pinned value set is held to the digest check
    passed = {(r["check_id"], r["resource"]) for r in results["passed_checks"]}
    assert ("CKV_K8S_43", "Pod.vap-gpu16.run-gpu16-head") in passed
    # skips are only the documented ones, each applied where its section says
    allowed = set(SKIPS["tag-pinned"]) | set(SKIPS["ray-pods"])
    assert {r["check_id"] for r in results["skipped_checks"]} <= allowed


def _checkov(documents: list[dict], tmp_path: Path) -> dict:
    """checkov's JSON report over these documents (SKIPS["all"] off everywhere)."""
    manifest = tmp_path / "all.yaml"
    manifest.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    proc = subprocess.run(
        [str(CHECKOV), "-f", str(manifest), "--framework", "kubernetes", "--skip-download", "-o", "json",
         "--skip-check", ",".join(SKIPS["all"])],
        capture_output=True, text=True, timeout=300,
    )
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def operator_rendered() -> dict[str, list[dict]]:
    """The platform chart with the operator on, and what the operator creates for one tick: the
    run's RayJob + ConfigMap (rendered by vap.kube) and the gate Job of that RayJob."""
    from datetime import UTC, datetime

    from vap.operators import resources as r

    values = _values(PLATFORM / "ci" / "operator-values.yaml")
    chart = kube.parse_manifests(kube.render(values, "vap-platform", "vap", PLATFORM))
    schedule = {"apiVersion": r.API_VERSION, "kind": r.KIND,
                "metadata": {"name": "nightly", "namespace": "vap", "uid": "uid-schedule"}, "spec": {}}
    tick = datetime(2027, 1, 1, 3, tzinfo=UTC)
    run = r.run_objects(schedule, yaml.safe_load((REPO / "examples" / "cluster.yaml").read_text()),
                        r.run_name("nightly", tick), "schedule", tick)
    rayjob = next(o for o in run if o["kind"] == "RayJob")
    created = {**rayjob, "metadata": {**rayjob["metadata"], "uid": "uid-rayjob"}}  # the API server sets uid
    return {"platform-operator": chart, "operator-run": [*run, r.gate_job(created, "PromoteIfGatePasses")]}


def test_checkov_passes_the_operator_and_the_objects_it_creates(operator_rendered, tmp_path):
    kube.validate(_all(operator_rendered))
    report = _checkov(_scan_documents(operator_rendered), tmp_path)
    results = report["results"]
    failed = [f"{r['check_id']} {r['resource']}" for r in results["failed_checks"]]
    assert failed == [], "checkov failures:\n" + "\n".join(failed)
    scanned = {r["resource"].split(".helm.sh/")[0] for r in results["passed_checks"]}
    assert {"Deployment.vap.vap-platform-operator", "Role.vap.vap-platform-operator", "Job.vap.nightly-202701010300-gate",
            "Pod.vap.nightly-202701010300-head"} <= scanned
    # each pod is selected by a NetworkPolicy: the operator's by its own, the gate Job's by the training one
    fenced = {r["resource"].split(".helm.sh/")[0] for r in results["passed_checks"] if r["check_id"] == "CKV2_K8S_6"}
    assert {"Pod.vap.vap-platform-operator", "Pod.vap.nightly-202701010300-gate"} <= fenced
    # the operator's token mount is the one extra skip, on its Deployment only
    skipped = {(r["check_id"], r["resource"]) for r in results["skipped_checks"]}
    assert {c for c, _ in skipped} <= set(SKIPS["tag-pinned"]) | set(SKIPS["ray-pods"]) | set(SKIPS["operator"])
    assert {res for c, res in skipped if c in SKIPS["operator"]} == {"Deployment.vap.vap-platform-operator"}


def test_pods_are_secure_by_default(rendered):
    seen = 0
    for obj in _all(rendered):
        for where, template in kube.pod_templates(obj):
            name = f"{obj['kind']}/{obj['metadata']['name']} {where}"
            spec = template["spec"]
            assert spec["automountServiceAccountToken"] is False, name
            assert spec["securityContext"]["runAsNonRoot"] is True, name
            assert spec["securityContext"]["runAsUser"] >= 10000, name
            assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
            for c in _containers(template):
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False, name
                assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], name
                assert sc["readOnlyRootFilesystem"] is True, name
                assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"], name
                # writable places are emptyDirs, never the image
                mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
                assert "/tmp" in mounts, name
                seen += 1
    assert seen == 17  # 3 training value sets x (submitter, head, workers, MLflow, hook) + MLflow set x 2


def test_credentials_come_only_from_secret_references(rendered):
    for obj in _all(rendered):
        assert obj["kind"] != "Secret", "a chart must not carry credentials"
        for _, template in kube.pod_templates(obj):
            for c in _containers(template):
                for env in c.get("env", []):
                    if CREDENTIAL_NAME.search(env["name"]) or env["name"] == "MLFLOW_BACKEND_STORE_URI":
                        assert "value" not in env and "secretKeyRef" in env["valueFrom"], (obj["metadata"]["name"], env)
                    assert env["name"] != "RAY_AUTH_MODE", "Ray token auth must stay on in the cluster"
                assert not any("://" in a and "@" in a for a in c.get("args", [])), "a URI with credentials on a command line"


def _matches(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_network_policies_cover_training_and_fence_mlflow(rendered):
    for name in ("train-defaults", "train-cpu", "train-gpu16"):
        objs = rendered[name]
        policies = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "NetworkPolicy"}
        training, mlflow = policies["vap-platform-training"], policies["vap-platform-mlflow"]
        rayjob = next(o for o in objs if o["kind"] == "RayJob")
        for where, template in kube.pod_templates(rayjob):
            labels = template["metadata"]["labels"]
            assert _matches(training["podSelector"], labels), f"{name} {where} not covered by the training policy"
            # training pods reach MLflow, and MLflow admits them
            assert any(_matches(peer["podSelector"], labels) for rule in mlflow["ingress"] for peer in rule["from"])
        assert set(training["policyTypes"]) == set(mlflow["policyTypes"]) == {"Ingress", "Egress"}
        # nothing else reaches MLflow: one ingress rule, from training pods only, on its port
        assert len(mlflow["ingress"]) == 1 and len(mlflow["ingress"][0]["from"]) == 1
        assert mlflow["ingress"][0]["ports"] == [{"port": 5000, "protocol": "TCP"}]
        deployment = next(o for o in objs if o["kind"] == "Deployment")
        assert _matches(mlflow["podSelector"], deployment["spec"]["template"]["metadata"]["labels"])
        assert not _matches(training["podSelector"], deployment["spec"]["template"]["metadata"]["labels"])
        # training egress: each other, MLflow, DNS, object storage (HTTPS) and nothing else
        egress_ports = sorted(p["port"] for rule in training["egress"] for p in rule.get("ports", []))
        assert egress_ports == [53, 53, 443, 5000]


def test_submitter_role_is_least_privilege(rendered):
    objs = rendered["train-defaults"]
    role = next(o for o in objs if o["kind"] == "Role")
    grants = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert {"create", "delete"} <= grants[("ray.io", "rayjobs")]
    assert grants[("ray.io", "rayclusters")] == {"get", "list", "watch"}
    assert "create" in grants[("", "configmaps")]  # the spec ConfigMap + Helm's release records
    assert not any(r in ("secrets", "*") or g == "*" for g, r in grants), "submitting must not read Secrets"
    assert not any("*" in verbs or "escalate" in verbs or "bind" in verbs for verbs in grants.values())
    binding = next(o for o in objs if o["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    training_sa = next(o for o in objs if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "vap-training")
    assert training_sa["automountServiceAccountToken"] is False
    assert not any(s["name"] == "vap-training" for s in binding["subjects"]), "training pods need no API access"


def test_mlflow_server_reads_secrets_from_env_and_checks_hosts(rendered):
    objs = rendered["platform-minio"]
    deployment = next(o for o in objs if o["kind"] == "Deployment")
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-postgres", "key": "uri"}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.storage.svc:9000"
    hosts = next(a for a in c["args"] if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert "vap-platform-mlflow.vap-minio:5000" in hosts and "mlflow.example.com" in hosts
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"  # exempt from the Host check
    hook = next(o for o in objs if o["kind"] == "Job")
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert hook["spec"]["template"]["spec"]["containers"][0]["command"] == ["vap", "k8s", "prepare-tracking"]


def _spec(**trainer) -> dict:
    return {
        "name": "vap-cluster", "model": {"family": "cogvideox", "backbone": "THUDM/CogVideoX-5b-I2V"},
        "data": {"shards": "s3://vap-data/shards", "frames": 49, "height": 480, "width": 720},
        "trainer": {"steps": 100, "checkpoint_every": 50, **trainer},
        "storage": {"uri": "s3://vap-runs"}, "registry": {"tracking_uri": "http://vap-platform-mlflow.vap:5000"},
    }


def _render_spec(spec: dict, **overrides) -> list[dict]:
    values = kube.values_from_spec(parse_spec(spec), overrides)
    objects = kube.parse_manifests(kube.render(values, spec["name"], "vap"))
    kube.validate(objects)
    return objects


def test_16_gpu_job_from_a_spec():
    objs = _render_spec(_spec(workers=16, use_gpu=True), workers={"gpusPerPod": 8})
    rayjob = next(o for o in objs if o["kind"] == "RayJob")
    spec = rayjob["spec"]
    assert spec["entrypoint"] == "vap train --config /etc/vap/job.yaml"
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    worker = group["template"]["spec"]
    res = worker["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == 8
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in worker["tolerations"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} in worker["volumes"]
    assert "nvidia.com/gpu" not in json.dumps(spec["rayClusterSpec"]["headGroupSpec"])
    assert worker["containers"][0]["image"] == "vap-platform:0.1.0-cuda"
    assert spec["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] == 600
    assert spec["backoffLimit"] == 2 and spec["activeDeadlineSeconds"] == 259200 and spec["suspend"] is False
    # the mounted spec is the user's spec, normalised, and loads back unchanged
    cm = next(o for o in objs if o["kind"] == "ConfigMap")
    assert parse_spec(yaml.safe_load(cm["data"]["job.yaml"])) == parse_spec(_spec(workers=16, use_gpu=True))
    mounts = worker["containers"][0]["volumeMounts"]
    assert {"name": "job-spec", "mountPath": "/etc/vap", "readOnly": True} in mounts


def test_cpu_only_job_from_a_spec():
    objs = _render_spec(_spec(workers=3, use_gpu=False))
    rayjob = next(o for o in objs if o["kind"] == "RayJob")
    assert "nvidia.com/gpu" not in json.dumps(objs)
    (group,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == 3 and group["groupName"] == "cpu-workers"
    env = {e["name"]: e.get("value") for e in group["template"]["spec"]["containers"][0]["env"]}
    assert env["DS_ACCELERATOR"] == "cpu"
    assert group["template"]["spec"]["containers"][0]["image"] == "vap-platform:0.1.0-cpu"
    assert "tolerations" not in group["template"]["spec"]


def test_kueue_queue_creates_the_job_suspended():
    objs = _render_spec(_spec(workers=2), kueue={"queueName": "team-a"})
    rayjob = next(o for o in objs if o["kind"] == "RayJob")
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert rayjob["spec"]["suspend"] is True


BAD_VALUES = {
    "negative workers": ({"workers": {"replicas": -1}}, r"'workers\.replicas': minimum: got -1, want 1"),
    "missing image": ({"image": {"repository": ""}}, r"'image\.repository': minLength"),
    "no image key": ({"image": {"repository": None}}, r"'image': missing property 'repository'"),
    "unknown key": ({"workerz": 3}, r"additional properties 'workerz' not allowed"),
    "unknown nested key": ({"head": {"cpus": 3}}, r"'head': additional properties 'cpus' not allowed"),
    "latest tag": ({"image": {"tag": "latest"}}, r"'image\.tag': 'latest' is refused"),
    "credential as plain env": ({"extraEnv": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}, r"'extraEnv\.0\.name': looks like a credential"),
    "root user": ({"runAsUser": 0}, r"'runAsUser': minimum"),
    "workers mismatch": ({"workers": {"replicas": 3}}, r"jobSpec\.trainer\.workers \(2\) must equal workers\.replicas \(3\)"),
    "gpus on a cpu job": ({"workers": {"gpusPerPod": 2, "replicas": 1}}, r"gpusPerPod is 2 but jobSpec\.trainer\.use_gpu is false"),
    "gpu in resources": ({"workers": {"resources": {"limits": {"cpu": 1, "memory": "1Gi", "nvidia.com/gpu": 1}}}}, r"additional properties 'nvidia\.com/gpu' not allowed"),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_refused_with_a_clear_message(case):
    override, message = BAD_VALUES[case]
    values = kube.deep_merge(_values(TRAIN_SETS["cpu"]), override)
    with pytest.raises(kube.KubeError, match=message) as err:
        kube.render(values, "bad", "vap")
    assert str(err.value).startswith("vap-train: values refused: ") and "\n" not in str(err.value)


def test_platform_refuses_wildcard_hosts_and_unknown_keys():
    with pytest.raises(kube.KubeError, match=r"'mlflow\.allowedHosts\.0': '\*' would switch off"):
        kube.render({"mlflow": {"allowedHosts": ["*"]}}, "p", "vap", PLATFORM)
    with pytest.raises(kube.KubeError, match=r"additional properties 'secretname' not allowed"):
        kube.render({"mlflow": {"backendStore": {"secretname": "x"}}}, "p", "vap", PLATFORM)


def test_notes_tell_how_to_follow_the_job(tmp_path):
    # helm 3.19 renders NOTES.txt only when installing (which asks a cluster for its version):
    # render it offline through a copy of the chart that exposes it with `tpl`.
    import shutil

    chart = shutil.copytree(TRAIN, tmp_path / "vap-train")
    (chart / "templates" / "NOTES.txt").rename(chart / "notes.txt")
    (chart / "templates" / "notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n')
    values = kube.deep_merge(_values(TRAIN_SETS["cpu"]), {"jobSpec": {"name": "run-cpu"}})
    objs = kube.parse_manifests(kube.render(values, "run-cpu", "team", chart))
    notes = next(o for o in objs if o["metadata"]["name"] == "notes")["data"]["notes"]
    assert "kubectl -n team get rayjob run-cpu -w" in notes
    assert "kubectl -n team logs -f job/run-cpu" in notes
    assert "2 Ray Train worker(s) on 2 worker pod(s)" in notes
    assert "Checkpoints: s3://vap-runs" in notes


def test_vendored_crds_are_kuberay_v1_7_0():
    shared = REPO.parent / "shared" / "vendor" / "kuberay-v1.7.0"
    if not shared.is_dir():
        pytest.skip("../shared is not beside the clone")
    for path in shared.iterdir():
        assert (kube.CRD_DIR / path.name).read_bytes() == path.read_bytes(), f"{path.name} differs from ../shared"


def test_chart_follows_the_job_spec_and_the_package_version():
    from importlib.metadata import version

    from vap.spec import JobSpec

    schema = json.loads((TRAIN / "values.schema.json").read_text())["properties"]["jobSpec"]
    assert set(schema["properties"]) == set(JobSpec.model_fields), "values.schema.json's jobSpec keys drifted from vap.spec.JobSpec"
    required = {name for name, field in JobSpec.model_fields.items() if field.is_required()}
    assert set(schema["required"]) == required
    for path in (TRAIN / "values.yaml", *TRAIN.glob("ci/*.yaml")):  # example specs are real specs
        parse_spec(yaml.safe_load(path.read_text())["jobSpec"], str(path))
    for chart in (TRAIN, PLATFORM):  # image tags are <version>-cpu|cuda
        assert yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"] == version("vap-platform")
