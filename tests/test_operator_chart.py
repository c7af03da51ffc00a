"""The operator in the platform chart: every object strictly valid, the CRD's schema refuses
what it can (checked with jsonschema over the rendered schema, the API server's rules), its
defaults are the operator's, the Role grants exactly the verbs the operator uses, the Deployment
probes kopf's liveness endpoint and runs as that Role's ServiceAccount."""

from __future__ import annotations

import copy
import subprocess

import jsonschema
import pytest
import yaml

from vap import kube
from vap.operators import reconcile
from vap.operators import resources as r

VALUES = kube.PLATFORM_CHART / "ci" / "operator-values.yaml"


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    values = yaml.safe_load(VALUES.read_text())
    return kube.parse_manifests(kube.render(values, "vap-platform", "vap", kube.PLATFORM_CHART))


def one(objects, kind, component="operator"):
    [obj] = [o for o in objects if o["kind"] == kind and o["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    return obj


def test_lint_and_every_object_valid(objects):
    proc = subprocess.run([kube.tool("helm"), "lint", "--strict", str(kube.PLATFORM_CHART), "--values", str(VALUES)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kube.validate(objects)
    for kind in ("CustomResourceDefinition", "Deployment", "ServiceAccount", "Role", "RoleBinding"):
        labels = one(objects, kind)["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "vap-platform" and labels["app.kubernetes.io/instance"] == "vap-platform"


def test_off_by_default():
    default = kube.parse_manifests(kube.render({}, "vap-platform", "vap", kube.PLATFORM_CHART))
    assert not [o for o in default if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "operator"]


def _schema(objects) -> dict:
    crd = one(objects, "CustomResourceDefinition")
    assert (crd["spec"]["group"], crd["spec"]["names"]["kind"], crd["spec"]["names"]["plural"]) == (r.GROUP, r.KIND, r.PLURAL)
    [version] = crd["spec"]["versions"]
    assert version["name"] == r.VERSION and version["subresources"] == {"status": {}}
    return version["schema"]["openAPIV3Schema"]


GOOD = {"apiVersion": r.API_VERSION, "kind": r.KIND, "metadata": {"name": "nightly"},
        "spec": {"schedule": "0 3 * * *", "timeZone": "Europe/Berlin", "jobSpec": {"name": "x"}}}


@pytest.mark.parametrize("change,where", [
    ({"schedule": "every day"}, "schedule"), ({"concurrencyPolicy": "Sometimes"}, "concurrencyPolicy"),
    ({"catchUp": "Everything"}, "catchUp"), ({"promotion": "Always"}, "promotion"),
    ({"maxCatchUpRuns": 0}, "maxCatchUpRuns"), ({"successfulRunsHistoryLimit": -1}, "successfulRunsHistoryLimit"),
    ({"evaluation": {"pairs": 0}}, "evaluation"), ({"evaluation": {"pairs": 4, "split": "train"}}, "evaluation"),
    ({"evaluation": {"split": "val"}}, "evaluation"), ({"evaluation": {"pairs": 4, "activeDeadlineSeconds": 5}}, "evaluation")])
def test_crd_schema_refuses_malformed_schedules(objects, change, where):
    validator = jsonschema.Draft4Validator(_schema(objects))
    validator.validate(GOOD)
    bad = copy.deepcopy(GOOD)
    bad["spec"].update(change)
    errors = list(validator.iter_errors(bad))
    assert [list(e.absolute_path)[:2] for e in errors] == [["spec", where]]


def test_the_documented_resource_is_valid_and_unknown_fields_are_refused(objects):
    """Strictly, as kubectl's default server-side field validation does (a plain client's typo would
    be pruned and the default used instead): operators/README.md's example passes, a typo does not."""
    from conftest import REPO

    from vap.kube.validation import _strict

    validator = jsonschema.Draft4Validator(_strict(_schema(objects)))
    readme = (REPO / "operators" / "README.md").read_text()
    example = yaml.safe_load(readme.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert (example["apiVersion"], example["kind"]) == (r.API_VERSION, r.KIND)
    body = {"spec": example["spec"]}  # apiVersion, kind and metadata are the API server's, not the CRD schema's
    assert not list(validator.iter_errors(body))
    typo = copy.deepcopy(body)
    typo["spec"]["concurencyPolicy"] = typo["spec"].pop("concurrencyPolicy")
    [error] = validator.iter_errors(typo)
    assert list(error.absolute_path) == ["spec"] and "concurencyPolicy" in error.message


def test_crd_defaults_are_the_operators(objects):
    properties = _schema(objects)["properties"]["spec"]["properties"]
    defaults = {key: prop["default"] for key, prop in properties.items() if "default" in prop}
    assert defaults == reconcile.DEFAULTS


def test_role_grants_exactly_what_the_operator_uses(objects):
    role = one(objects, "Role")
    grants = {(g, res): sorted(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for res in rule["resources"]}
    assert grants == {
        ("vap.dev", "vapretrainschedules"): ["list", "patch", "watch"],  # kopf: watch, list, annotations
        ("vap.dev", "vapretrainschedules/status"): ["patch"],  # status and conditions
        ("ray.io", "rayjobs"): ["create", "delete", "get", "list"],  # cluster.Cluster
        ("batch", "jobs"): ["create", "delete", "get", "list"],  # the gate Job
        ("", "configmaps"): ["create", "delete", "get", "list"],  # the run's spec, jobSpecFrom
        ("", "events"): ["create"],  # kopf.event
    }
    binding = one(objects, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "vap-operator", "namespace": "vap"}]


def test_deployment_runs_the_handlers_with_a_liveness_probe(objects):
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    [container] = pod["containers"]
    command = container["command"]
    assert command[:3] == ["kopf", "run", "--standalone"] and command[-2:] == ["-m", "vap.operators.handlers"]
    liveness = next(a for a in command if a.startswith("--liveness=")).split("=", 1)[1]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == container["livenessProbe"]["httpGet"]["port"])
    assert liveness == f"http://0.0.0.0:{port}{container['livenessProbe']['httpGet']['path']}"
    env = {e["name"]: e for e in container["env"]}
    assert env["VAP_OPERATOR_INTERVAL"]["value"] == "20"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "minio-credentials"
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert all(deployment["spec"]["template"]["metadata"]["labels"][k] == v for k, v in selector.items())


def test_interval_beyond_the_on_time_window_is_refused():
    with pytest.raises(kube.KubeError, match="operator.interval"):
        kube.render({"operator": {"enabled": True, "interval": 600}}, "vap-platform", "vap", kube.PLATFORM_CHART)


DNS = {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
       "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}


def _selects(policy: dict, pod_labels: dict) -> bool:
    selector = policy["spec"]["podSelector"]
    assert set(selector) == {"matchLabels"}, selector
    return all(pod_labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_network_policy_fences_the_operator(objects):
    """No ingress; egress to DNS, the API server and object storage (the data trigger) only:
    exactly the values file's peers, nothing towards MLflow or the Ray pods."""
    values = yaml.safe_load(VALUES.read_text())["networkPolicy"]
    policy = one(objects, "NetworkPolicy")
    pods = {f"{o['kind']}/{o['metadata']['name']}": tpl["metadata"]["labels"]
            for o in objects for _, tpl in kube.pod_templates(o)}
    assert [name for name, labels in pods.items() if _selects(policy, labels)] == ["Deployment/vap-platform-operator"]
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in spec  # deny every inbound connection
    assert spec["egress"] == [DNS, *values["apiServer"], *values["objectStorage"]]


def test_network_policy_defaults_and_probe_ingress():
    render = lambda values: kube.parse_manifests(kube.render(values, "vap-platform", "vap", kube.PLATFORM_CHART))  # noqa: E731
    objects = render({"operator": {"enabled": True}})
    egress = one(objects, "NetworkPolicy")["spec"]["egress"]
    # the API server's port after the Service's NAT: 6443 (kubeadm) or 443 (managed), anywhere until narrowed
    assert {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
            "ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]} in egress
    nodes = [{"ipBlock": {"cidr": "10.0.0.0/16"}}]
    objects = render({"operator": {"enabled": True}, "networkPolicy": {"operatorProbeFrom": nodes}})
    [rule] = one(objects, "NetworkPolicy")["spec"]["ingress"]
    [container] = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert rule == {"from": nodes, "ports": [{"port": container["livenessProbe"]["httpGet"]["port"], "protocol": "TCP"}]}
    kube.validate(objects)
    off = render({"operator": {"enabled": True}, "networkPolicy": {"enabled": False}})
    assert not [o for o in off if o["kind"] == "NetworkPolicy"]
