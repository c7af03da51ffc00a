"""The cluster path as a user meets it: `examples/cluster.yaml` loads and renders to valid
objects, and a built-in Kubernetes object with unknown or mistyped fields is refused with every
problem named (the API server would silently prune an unknown field)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from vap import kube
from vap.errors import KubeError
from vap.spec import load_spec

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cluster.yaml"


@pytest.fixture(scope="module")
def rendered():
    spec, _, manifests = kube.prepare(EXAMPLE)  # check the spec, render the chart, validate every object
    return spec, kube.parse_manifests(manifests)


def test_cluster_example_loads_and_renders(rendered):
    spec, objects = rendered
    assert spec == load_spec(EXAMPLE) and spec.trainer.workers == 8 and spec.trainer.zero_stage == 3
    (job,) = [o for o in objects if o["kind"] == "RayJob"]
    # one GPU per worker pod by default: 8 training workers = 8 Ray worker pods
    assert sum(g["replicas"] for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]) == spec.trainer.workers
    assert any(o["kind"] not in ("RayJob", "RayCluster") for o in objects)  # built-in kinds too


def test_builtin_objects_with_unknown_fields_name_every_problem(rendered):
    _, objects = rendered
    builtins = [o for o in objects if o["kind"] not in ("RayJob", "RayCluster")]
    for obj in builtins:
        assert kube.object_problems(obj) == [], obj["kind"]
        bad = copy.deepcopy(obj)
        bad["metadata"]["labelz"] = {"a": "b"}  # typo of labels
        bad["colour"] = "blue"  # a field no kind has, at the top level
        problems = kube.object_problems(bad)
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert len(problems) == 2, problems
        assert all(p.startswith(where) for p in problems)
        assert any("'labelz' was unexpected" in p for p in problems) and any("'colour'" in p for p in problems)


def test_a_deployment_with_three_problems_reports_three():
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": "two", "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "nginx:1.27", "imagePullPolcy": "Always"}],
                                       "restartPolicyy": "Always"}}},
    }
    problems = kube.object_problems(deployment)
    assert problems == [
        "Deployment/web: spec.replicas: 'two' is not of type 'integer', 'null'",
        "Deployment/web: spec.template.spec: Additional properties are not allowed ('restartPolicyy' was unexpected)",
        "Deployment/web: spec.template.spec.containers[0]: Additional properties are not allowed "
        "('imagePullPolcy' was unexpected)",
    ]
    with pytest.raises(KubeError, match=r"^3 invalid field\(s\) .*restartPolicyy.*imagePullPolcy"):
        kube.validate([deployment])
