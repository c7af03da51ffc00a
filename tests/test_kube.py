"""`vap.kube` and `vap k8s`: job spec → values, the cluster checks a submission makes, dry runs,
clear errors without a cluster, the platform chart's bootstrap hook, the pinned tools."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vap import kube
from vap.spec import parse_spec

REPO = Path(__file__).resolve().parents[1]
VAP = str(Path(sys.executable).parent / "vap")


def _spec(**trainer) -> dict:
    return {
        "name": "vap-wan", "model": {"family": "wan", "backbone": "s3://vap-models/Wan2.1-I2V-14B-480P-Diffusers"},
        "data": {"shards": "s3://vap-data/shards"},
        "trainer": {"steps": 20, "checkpoint_every": 10, **trainer},
        "storage": {"uri": "s3://vap-runs"}, "registry": {"tracking_uri": "http://vap-platform-mlflow.vap:5000"},
    }


@pytest.fixture()
def spec_file(tmp_path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(_spec(workers=2)))
    return path


def test_workers_map_to_pods_one_per_gpu():
    spec = parse_spec(_spec(workers=16, use_gpu=True))
    assert kube.values_from_spec(spec)["workers"] == {"replicas": 16, "gpusPerPod": 1, "tolerations": [kube.GPU_TOLERATION]}
    eight = kube.values_from_spec(spec, {"workers": {"gpusPerPod": 8, "tolerations": []}})
    assert eight["workers"] == {"replicas": 2, "gpusPerPod": 8, "tolerations": []}  # the user's tolerations win
    assert eight["image"] == {"repository": "vap-platform", "tag": "0.1.0-cuda"}
    with pytest.raises(kube.KubeError, match=r"trainer\.workers \(16\) is not a multiple of GPUs per pod \(6\)"):
        kube.values_from_spec(spec, {"workers": {"gpusPerPod": 6}})
    cpu = parse_spec(_spec(workers=3))
    assert kube.values_from_spec(cpu)["workers"] == {"replicas": 3, "gpusPerPod": 0}
    with pytest.raises(kube.KubeError, match=r"gpusPerPod is 4 but trainer\.use_gpu is false"):
        kube.values_from_spec(cpu, {"workers": {"gpusPerPod": 4}})


def test_a_spec_of_this_machine_is_refused_for_the_cluster():
    with pytest.raises(kube.KubeError) as err:
        kube.values_from_spec(parse_spec(yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())))
    msg = str(err.value)
    for key in ("storage.uri", "data.shards", "model.backbone", "registry.tracking_uri"):
        assert f"{key} is " in msg, key
    assert "use an s3:// URI" in msg and "http(s)://" in msg
    hub = _spec(workers=2) | {"model": {"family": "wan", "backbone": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"}}
    assert kube.values_from_spec(parse_spec(hub))["jobSpec"]["model"]["backbone"] == "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"


def test_a_password_in_values_is_refused_without_echoing_it():
    spec = parse_spec(_spec(workers=2) | {"registry": {"tracking_uri": "https://ci:hunter2@mlflow.example.com"}})
    with pytest.raises(kube.KubeError, match=r"'jobSpec\.registry\.tracking_uri' holds a URL with a password") as err:
        kube.values_from_spec(spec)
    assert "hunter2" not in str(err.value)
    with pytest.raises(kube.KubeError, match=r"'objectStorage\.endpoint' holds a URL with a password"):
        kube.values_from_spec(parse_spec(_spec(workers=2)), {"objectStorage": {"endpoint": "http://ak:sk@minio:9000"}})


def test_image_reference_parsing():
    assert kube.image_values("registry.local:5000/vap/vap-platform:1.2-cuda") == {"repository": "registry.local:5000/vap/vap-platform", "tag": "1.2-cuda"}
    assert kube.image_values("ghcr.io/x/vap@sha256:" + "a" * 64) == {"repository": "ghcr.io/x/vap", "digest": "sha256:" + "a" * 64}
    with pytest.raises(kube.KubeError, match="has no tag"):
        kube.image_values("registry.local:5000/vap/vap-platform")


def test_values_files_merge_like_helm(tmp_path):
    (tmp_path / "a.yaml").write_text("workers: {gpusPerPod: 8, resources: {limits: {cpu: '64', memory: 900Gi}}}\n")
    (tmp_path / "b.yaml").write_text("workers: {resources: {limits: {cpu: '32'}}}\nkueue: {queueName: q}\n")
    merged = kube.load_values_files([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    assert merged == {"workers": {"gpusPerPod": 8, "resources": {"limits": {"cpu": "32", "memory": "900Gi"}}}, "kueue": {"queueName": "q"}}
    (tmp_path / "c.yaml").write_text("- not a mapping\n")
    with pytest.raises(kube.KubeError, match=r"c\.yaml: a values file is a YAML mapping"):
        kube.load_values_files([tmp_path / "c.yaml"])


def _vap(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([VAP, "k8s", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_dry_run_prints_validated_objects_and_contacts_nothing(spec_file, tmp_path):
    values = tmp_path / "cluster.yaml"
    values.write_text("objectStorage: {endpoint: 'http://minio.storage:9000'}\n")
    proc = _vap("submit", str(spec_file), "--dry-run", "-n", "team-a", "-f", str(values), "--image", "reg.io/vap:1.0-cpu",
                env={"KUBECONFIG": str(tmp_path / "none")})
    assert proc.returncode == 0, proc.stderr
    objs = kube.parse_manifests(proc.stdout)
    assert sorted(o["kind"] for o in objs) == ["ConfigMap", "RayJob"]
    assert all(o["metadata"]["namespace"] == "team-a" for o in objs)
    rayjob = next(o for o in objs if o["kind"] == "RayJob")
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == "reg.io/vap:1.0-cpu"
    assert {"name": "S3_ENDPOINT_URL", "value": "http://minio.storage:9000"} in head["env"]
    kube.validate(objs)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    return line


def test_make_submit_job_dry_run(spec_file):
    # -o setup: the venv is set up already (`make test` depends on setup)
    make = ["make", "-s", "-o", "setup", "-C", str(REPO), "submit-job"]
    proc = subprocess.run([*make, f"SPEC={spec_file}", "DRY_RUN=1", "NAMESPACE=team-b"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    objs = kube.parse_manifests(proc.stdout)  # stdout is exactly the objects
    assert sorted((o["kind"], o["metadata"]["namespace"]) for o in objs) == [("ConfigMap", "team-b"), ("RayJob", "team-b")]
    proc = subprocess.run(make, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "make submit-job SPEC=" in proc.stderr


def test_submit_without_a_cluster_is_one_clear_line(spec_file, tmp_path):
    # no kube context at all
    line = _error_line(_vap("submit", str(spec_file), env={"KUBECONFIG": str(tmp_path / "missing")}))
    assert "no current kube context" in line and "--dry-run" in line
    # a context whose API server does not answer (a closed local port)
    from conftest import free_port

    # inside a pod there is no kubeconfig: the ServiceAccount's in-cluster config is used
    line = _error_line(_vap("submit", str(spec_file), env={
        "KUBECONFIG": str(tmp_path / "missing"), "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(free_port())}))
    assert "the cluster of kube context 'in-cluster' is not reachable" in line

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": f"https://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
    }))
    proc = _vap("submit", str(spec_file), env={"KUBECONFIG": str(kubeconfig)})
    line = _error_line(proc)
    assert "the cluster of kube context 'gone' is not reachable" in line and "DRY_RUN=1" in line
    assert "not-a-real-token" not in proc.stderr


@pytest.fixture()
def fake_apiserver(tmp_path, monkeypatch):
    """An in-memory Kubernetes API (kmock) on a loopback port; KUBECONFIG points at it."""
    import asyncio
    import threading

    import kmock

    loop, ready, box = asyncio.new_event_loop(), threading.Event(), {}

    async def serve():
        box["stop"] = asyncio.Event()
        async with kmock.KubernetesEmulator() as api, kmock.Server(api) as server:
            api["/readyz"] << b"ok"
            box["api"], box["url"] = api, str(server.url)
            ready.set()
            await box["stop"].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(20), "kmock did not start"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": box["url"]}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    yield box["api"]
    loop.call_soon_threadsafe(box["stop"].set)
    thread.join(10)


def test_cluster_check_wants_kuberay(fake_apiserver):
    verbs = ["get", "list", "watch", "create", "update", "patch", "delete"]
    fake_apiserver.resources["v1/configmaps"] = {"kind": "ConfigMap", "namespaced": True, "verbs": verbs}
    with pytest.raises(kube.KubeError, match=r"KubeRay is not installed in the cluster of context 'fake' \(no rayjobs\.ray\.io API\)"):
        kube.check_cluster()
    fake_apiserver.resources["ray.io/v1/rayjobs"] = {"kind": "RayJob", "namespaced": True, "verbs": verbs}
    assert kube.check_cluster() == "fake"


def test_a_finished_job_is_not_silently_upgraded(fake_apiserver, spec_file):
    import kmock

    verbs = ["get", "list", "watch", "create", "update", "patch", "delete"]
    rayjobs = kmock.resource("ray.io/v1/rayjobs")
    fake_apiserver.resources[rayjobs] = {"kind": "RayJob", "namespaced": True, "verbs": verbs}
    assert kube.rayjob_status("vap-wan", "team") is None
    fake_apiserver.objects[rayjobs, "team", "vap-wan"] = {
        "apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "vap-wan", "namespace": "team"},
        "status": {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}}
    assert kube.rayjob_status("vap-wan", "team") == "Complete"
    with pytest.raises(kube.KubeError, match=r"RayJob team/vap-wan already ran \(Complete\).*--replace \(REPLACE=1"):
        kube.submit(spec_file, namespace="team")


def test_submit_checks_the_spec_first(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_spec(workers=0)))
    proc = _vap("submit", str(bad), "--dry-run")
    assert "'trainer.workers'" in _error_line(proc) and "RayJob" not in proc.stdout


def test_validate_command_names_the_bad_field(tmp_path, spec_file):
    _, _, manifests = kube.prepare(spec_file)
    objs = kube.parse_manifests(manifests)
    next(o for o in objs if o["kind"] == "RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParam"] = {}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump_all(objs))
    line = _error_line(_vap("validate", str(path)))
    assert "RayJob/vap-wan: spec.rayClusterSpec.headGroupSpec: Additional properties are not allowed ('rayStartParam' was unexpected)" in line
    path.write_text(manifests)
    assert _vap("validate", str(path)).returncode == 0


def test_install_script_is_pinned_and_idempotent():
    script = REPO / "tools" / "install-k8s-tools.sh"
    proc = subprocess.run(["bash", str(script), str(Path(sys.executable).parent.parent)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "already installed" in proc.stdout  # make setup ran it: a second run changes nothing
    helm = subprocess.run([kube.tool("helm"), "version", "--template", "{{.Version}}"], capture_output=True, text=True)
    assert helm.stdout == "v3.19.0"
    kubectl = subprocess.run([kube.tool("kubectl"), "version", "--client", "-o", "yaml"], capture_output=True, text=True)
    assert yaml.safe_load(kubectl.stdout)["clientVersion"]["gitVersion"] == "v1.34.5"


def test_charts_dir_can_be_moved(spec_file, tmp_path):
    """The image installs vap as a package and its charts elsewhere (VAP_CHARTS_DIR)."""
    import shutil

    charts = shutil.copytree(REPO / "charts", tmp_path / "charts")
    values = charts / "vap-train" / "values.yaml"
    values.write_text(values.read_text().replace("scratchSize: 20Gi", "scratchSize: 7Gi"))
    proc = _vap("render", str(spec_file), env={"VAP_CHARTS_DIR": str(charts)})
    assert proc.returncode == 0, proc.stderr
    assert "sizeLimit: 7Gi" in proc.stdout
    line = _error_line(_vap("render", str(spec_file), env={"VAP_CHARTS_DIR": str(tmp_path / "nowhere")}))
    assert "no chart at" in line and "VAP_CHARTS_DIR" in line


def test_dockerfile_passes_checkov():
    checkov = REPO / ".tools" / "checkov" / "bin" / "checkov"
    proc = subprocess.run([str(checkov), "-f", str(REPO / "Dockerfile"), "--framework", "dockerfile", "--skip-download",
                           "-o", "json"], capture_output=True, text=True, timeout=120)
    report = json.loads(proc.stdout)
    assert report["results"]["failed_checks"] == [], [c["check_id"] for c in report["results"]["failed_checks"]]
    assert report["summary"]["passed"] > 100  # non-root USER, no latest base tag, HEALTHCHECK stated, …


def test_contract_names_live_in_the_module_of_their_concern():
    """docs/CONTRACTS.md names each public name's module: it is there and re-exported by vap.kube."""
    import importlib
    import re

    section = (REPO / "docs" / "CONTRACTS.md").read_text().split("## Kubernetes", 1)[1].split("\n## ", 1)[0]
    homes = re.findall(r"`(vap\.kube\.\w+)`\s+\(([^)]*)\)", section)
    assert {m for m, _ in homes} == {f"vap.kube.{m}" for m in ("values", "helm", "validation", "cluster", "release", "tools")}
    for module, names in homes:
        for name in re.findall(r"`(\w+)`", names):
            assert getattr(importlib.import_module(module), name) is getattr(kube, name), f"{module}.{name}"
    for name in re.findall(r"`(\w+)`", section.split("Each name")[0]):
        assert hasattr(kube, name), name


def test_the_operator_imports_the_split_modules_instead_of_copying_them():
    import ast

    used = set()
    for path in (REPO / "operators").glob("*.py"):
        tree = ast.parse(path.read_text())
        imports = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not any(node.module == "vap" and any(a.name == "kube" for a in node.names) for node in imports), \
            f"{path.name}: import the module of the concern (vap.kube.values, …), not the whole of vap.kube"
        used |= {node.module for node in imports if (node.module or "").startswith("vap.kube")}
        defined = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert not defined & set(kube.__all__), f"{path.name} redefines {defined & set(kube.__all__)}"
    assert used == {"vap.kube.values", "vap.kube.helm", "vap.kube.validation", "vap.kube.cluster"}
