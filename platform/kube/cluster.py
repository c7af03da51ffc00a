"""Access to the cluster of the current kube context through kubectl: is it reachable with
KubeRay installed, and what is the state of a RayJob."""

from __future__ import annotations

import os

import yaml

from vap.errors import KubeError
from vap.kube.tools import one_line, run, tool
from vap.kube.validation import KUBERAY_VERSION

# KubeRay's jobDeploymentStatus values after which a RayJob never runs again.
FINISHED = ("Complete", "Failed", "ValidationFailed")


def check_cluster() -> str:
    """The current kube context, after checking its API server answers and KubeRay is installed."""
    kubectl = tool("kubectl")
    proc = run([kubectl, "config", "current-context"], "kubectl config current-context", timeout=20)
    context = proc.stdout.strip() if proc.returncode == 0 else ""
    if not context and os.environ.get("KUBERNETES_SERVICE_HOST"):
        context = "in-cluster"  # a pod (the operator): kubectl and helm use its ServiceAccount
    if not context:
        raise KubeError(
            "no current kube context (KUBECONFIG="
            f"{os.environ.get('KUBECONFIG', '~/.kube/config')}): point kubectl at a cluster "
            "(kubectl config use-context NAME), or render offline with --dry-run (DRY_RUN=1)"
        )
    proc = run([kubectl, "--request-timeout=10s", "get", "--raw=/readyz"], "kubectl get --raw=/readyz", timeout=30)
    if proc.returncode != 0:
        raise KubeError(
            f"the cluster of kube context '{context}' is not reachable ({one_line(proc.stderr)[:300]}): "
            "check the network/VPN and credentials, or render offline with --dry-run (DRY_RUN=1)"
        )
    proc = run([kubectl, "--request-timeout=10s", "api-resources", "--api-group=ray.io", "-o", "name"],
               "kubectl api-resources", timeout=30)
    if "rayjobs.ray.io" not in proc.stdout.split():
        raise KubeError(
            f"KubeRay is not installed in the cluster of context '{context}' (no rayjobs.ray.io API): "
            f"install the KubeRay operator {KUBERAY_VERSION} first"
        )
    return context


def rayjob_status(name: str, namespace: str) -> str | None:
    """The jobDeploymentStatus of an existing RayJob ("" before KubeRay saw it), None if absent."""
    proc = run([tool("kubectl"), "--request-timeout=10s", "get", "rayjobs.ray.io", name, "-n", namespace,
                "--ignore-not-found", "-o", "json"], "kubectl get rayjob", timeout=30)
    if proc.returncode != 0:
        raise KubeError(f"cannot read RayJob {namespace}/{name}: {one_line(proc.stderr)[:300]}")
    if not proc.stdout.strip():
        return None
    return (yaml.safe_load(proc.stdout).get("status") or {}).get("jobDeploymentStatus", "")
