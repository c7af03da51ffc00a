"""Offline validation of rendered objects, strict: built-in kinds with kubernetes-validate at a
pinned Kubernetes version, KubeRay kinds against the OpenAPI schemas of the vendored KubeRay
CRDs with unknown fields treated as errors (the API server would prune them silently). Also
`pod_templates`: every pod an object will create, for the checks that look inside them."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterator

import yaml

from vap.errors import KubeError
from vap.kube.helm import CHARTS

log = logging.getLogger(__name__)

KUBERAY_VERSION = "v1.7.0"
CRD_DIR = CHARTS / "crds-schemas" / f"kuberay-{KUBERAY_VERSION}"
# The cluster version objects are validated against (kubectl v1.34.5 ships with the tools).
KUBERNETES_VERSION = "1.34.0"


def _strict(schema: object) -> object:
    """Close every object schema that lists its properties: unknown fields become errors."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    # under "properties" the keys are field names, not schema keywords
    out = {k: ({n: _strict(s) for n, s in v.items()} if k == "properties" else _strict(v)) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


_META = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        # the operator's RayJobs are owned by their schedule (garbage collection, adoption)
        "ownerReferences": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "name", "uid"],
            "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "name": {"type": "string"},
                           "uid": {"type": "string"}, "controller": {"type": "boolean"},
                           "blockOwnerDeletion": {"type": "boolean"}}}},
    },
}


@functools.cache
def crd_validators() -> dict[tuple[str, str], object]:
    """(apiVersion, kind) → a strict jsonschema validator, from the vendored KubeRay CRDs."""
    import jsonschema

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 2 MB of YAML
    validators = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=loader)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for ver in crd["spec"]["versions"]:
            schema = _strict(ver["schema"]["openAPIV3Schema"])
            schema["properties"].pop("status", None)  # written by the operator, never by us
            schema["properties"]["metadata"] = _META
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
            validators[(f"{group}/{ver['name']}", kind)] = jsonschema.Draft4Validator(schema)
    if not validators:
        raise KubeError(f"no KubeRay CRDs in {CRD_DIR}: restore charts/crds-schemas from git")
    return validators


def _where(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def object_problems(obj: dict, k8s_version: str = KUBERNETES_VERSION) -> list[str]:
    """Everything wrong with one object, each as `Kind/name: field: problem`."""
    import kubernetes_validate

    kind, name = obj.get("kind", "?"), (obj.get("metadata") or {}).get("name", "?")
    key = (obj.get("apiVersion", ""), kind)
    if key in crd_validators():
        errors = sorted(crd_validators()[key].iter_errors(obj), key=lambda e: list(e.absolute_path))
        return [f"{kind}/{name}: {_where(e.absolute_path)}: {e.message}" for e in errors]
    try:
        kubernetes_validate.validate(obj, k8s_version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{kind}/{name}: {key[0]} {kind} is not a Kubernetes {k8s_version} kind nor a KubeRay {KUBERAY_VERSION} one"]
    except kubernetes_validate.ValidationError as err:  # validate() stops at the first problem: list them all
        errors = sorted(_builtin_validator(key[0], kind, k8s_version).iter_errors(obj),
                        key=lambda e: list(e.absolute_path))
        return [f"{kind}/{name}: {_where(e.absolute_path)}: {e.message}" for e in errors] or \
            [f"{kind}/{name}: {_where(err.path)}: {err.message}"]
    return []


@functools.cache
def _builtin_validator(api_version: str, kind: str, k8s_version: str):
    """kubernetes-validate's strict schema of a built-in kind, as the validator it builds."""
    import jsonschema
    from kubernetes_validate.utils import all_versions, major_minor, schema_contents
    from referencing import Registry, Resource

    # the schemas of the newest release not newer than k8s_version, as kubernetes_validate.validate picks
    schema_version = [v for v in all_versions() if major_minor(v) <= major_minor(k8s_version)][-1]
    folder = f"kubernetes-json-schema/v{schema_version}-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)  # rbac.authorization.k8s.io/v1 → rbac-v1
    schema = schema_contents(f"{folder}/{kind.lower()}-{group}.json", schema_version)
    registry = Resource.from_contents(schema_contents(f"{folder}/_definitions.json", schema_version)) @ (
        Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def validate(objects: list[dict], k8s_version: str = KUBERNETES_VERSION) -> None:
    """Raise KubeError listing every problem of every object (nothing is sent anywhere)."""
    problems = [p for obj in objects for p in object_problems(obj, k8s_version)]
    if problems:
        raise KubeError(f"{len(problems)} invalid field(s) in the rendered objects: " + "; ".join(problems))
    log.info("%d object(s) valid (Kubernetes %s, KubeRay %s)", len(objects), k8s_version, KUBERAY_VERSION)


def pod_templates(obj: dict) -> Iterator[tuple[str, dict]]:
    """(where, pod template) for every pod an object will create, KubeRay's included."""
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        yield "template", spec["template"]
    elif kind == "CronJob":
        yield "jobTemplate", spec["jobTemplate"]["spec"]["template"]
    elif kind == "Pod":
        yield "pod", {"metadata": obj.get("metadata", {}), "spec": spec}
    elif kind in ("RayJob", "RayCluster"):
        cluster = spec.get("rayClusterSpec", spec) if kind == "RayJob" else spec
        if "submitterPodTemplate" in spec:
            yield "submitter", spec["submitterPodTemplate"]
        yield "head", cluster["headGroupSpec"]["template"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"worker group {group['groupName']}", group["template"]
