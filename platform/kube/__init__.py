"""Kubernetes objects of the platform: job spec → chart values, render, validate, submit. Used
by `vap k8s`, `make submit-job`, the tests and the retraining operator (`vap.operators`).

One module per concern, each importable on its own:

- `values`: job spec → values of `charts/vap-train` (workers per pod, image, the checks that a
  spec can run on a cluster, no credentials in values: Secrets are referenced by name);
- `helm`: the charts and `helm template` (bad values explained as one line per key);
- `validation`: strict offline validation (Kubernetes 1.34 schemas, the vendored KubeRay CRDs,
  unknown fields are errors) and the pod templates inside objects;
- `cluster`: the current kube context through kubectl (reachable, KubeRay installed, RayJob state);
- `release`: `prepare` (check, render, validate) and `submit` (`helm upgrade --install`);
- `tools`: the pinned helm / kubectl binaries and how they are run.

The names below are the package's public surface (docs/CONTRACTS.md): `from vap import kube`
then `kube.render(...)` keeps working whichever module a name lives in.
"""

from vap.errors import KubeError
from vap.kube.cluster import FINISHED, check_cluster, rayjob_status
from vap.kube.helm import (
    CHARTS,
    DEFAULT_NAMESPACE,
    PLATFORM_CHART,
    REPO,
    TRAIN_CHART,
    explain_helm_error,
    parse_manifests,
    render,
)
from vap.kube.release import Submission, prepare, submit
from vap.kube.tools import HELM_DRIVER, tool
from vap.kube.validation import (
    CRD_DIR,
    KUBERAY_VERSION,
    KUBERNETES_VERSION,
    crd_validators,
    object_problems,
    pod_templates,
    validate,
)
from vap.kube.values import (
    GPU_TOLERATION,
    cluster_problems,
    deep_merge,
    default_image_tag,
    image_values,
    load_values_files,
    refuse_credentials,
    values_from_spec,
)

__all__ = [
    "CHARTS", "CRD_DIR", "DEFAULT_NAMESPACE", "FINISHED", "GPU_TOLERATION", "HELM_DRIVER", "KUBERAY_VERSION",
    "KUBERNETES_VERSION", "PLATFORM_CHART", "REPO", "TRAIN_CHART", "KubeError", "Submission", "check_cluster",
    "cluster_problems", "crd_validators", "deep_merge", "default_image_tag", "explain_helm_error", "image_values",
    "load_values_files", "object_problems", "parse_manifests", "pod_templates", "prepare", "rayjob_status",
    "refuse_credentials", "render", "submit", "tool", "validate", "values_from_spec",
]
