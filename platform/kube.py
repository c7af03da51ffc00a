"""Kubernetes objects of the platform, in one place: job spec → chart values, render, validate,
submit. Used by `vap k8s`, `make submit-job`, the tests, and later the retraining operator.

Rendering is `helm template` of `charts/vap-train`; validation is offline: built-in kinds with
kubernetes-validate at a pinned Kubernetes version, KubeRay kinds against the OpenAPI schemas of
the vendored KubeRay CRDs with unknown fields treated as errors (the API server would prune them
silently). Credentials never enter values: they are referenced by Secret name, and a value that
carries one (a URL with a password) is refused.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from urllib.parse import urlparse

import yaml

from vap.errors import KubeError
from vap.spec import JobSpec, load_spec

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
# The repo's charts; the image sets VAP_CHARTS_DIR (it installs vap as a package, without them).
CHARTS = Path(os.environ.get("VAP_CHARTS_DIR") or REPO / "charts")
TRAIN_CHART = CHARTS / "vap-train"
PLATFORM_CHART = CHARTS / "vap-platform"
KUBERAY_VERSION = "v1.7.0"
CRD_DIR = CHARTS / "crds-schemas" / f"kuberay-{KUBERAY_VERSION}"
# The cluster version objects are validated against (kubectl v1.34.5 ships with the tools).
KUBERNETES_VERSION = "1.34.0"
DEFAULT_NAMESPACE = "vap"
# Helm keeps release records in ConfigMaps: whoever submits jobs then needs no access to the
# namespace's Secrets (see the platform chart's submitter Role).
HELM_DRIVER = "configmap"


# --- job spec → values -------------------------------------------------------------------------


def default_image_tag(spec: JobSpec) -> str:
    """The tag `make image` gives the image variant this spec needs (`<version>-cpu|cuda`)."""
    try:
        ver = version("vap-platform")
    except PackageNotFoundError:
        ver = "0.1.0"
    return f"{ver}-{'cuda' if spec.trainer.use_gpu else 'cpu'}"


def image_values(image: str) -> dict:
    """`repo:tag` or `repo@sha256:…` → the chart's `image` values."""
    if "@" in image:
        repo, digest = image.split("@", 1)
        return {"repository": repo, "digest": digest}
    repo, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:  # no tag, or the colon belonged to a registry port
        raise KubeError(f"image {image!r} has no tag: give repository:tag or repository@sha256:digest")
    return {"repository": repo, "tag": tag}


def deep_merge(base: dict, over: dict) -> dict:
    """Helm's merge of values files: mappings merge key by key, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def cluster_problems(spec: JobSpec) -> list[str]:
    """What in a spec only makes sense on this machine: pods cannot read its disk or its sqlite file."""
    problems = []
    uris = {"storage.uri": spec.storage.uri, "data.shards": spec.data.shards, "data.source": spec.data.source}
    from vap.storage import is_storage_location

    if is_storage_location(spec.model.backbone):
        uris["model.backbone"] = spec.model.backbone  # otherwise a hub id
    for key, uri in uris.items():
        if uri and not uri.startswith("s3://"):
            problems.append(f"{key} is {uri!r}, on this machine: use an s3:// URI the cluster can reach")
    if not spec.registry.tracking_uri.startswith(("http://", "https://", "databricks")):
        problems.append(
            f"registry.tracking_uri is {spec.registry.tracking_uri!r}: use the tracking server's "
            "http(s):// URL (the platform chart's: http://vap-platform-mlflow.<namespace>:5000)"
        )
    return problems


def values_from_spec(spec: JobSpec, overrides: dict | None = None, image: str | None = None) -> dict:
    """Chart values for one run: the spec (mounted as the job's config) plus cluster settings.

    `overrides` are cluster settings in the chart's values layout (a values file: resources,
    node selectors, secrets' names, `workers.gpusPerPod`…). With GPUs, one Ray Train worker
    runs per GPU: `trainer.workers` must be a multiple of `workers.gpusPerPod` (default 1, so
    one pod per worker); on CPU one worker runs per pod.
    """
    problems = cluster_problems(spec)
    if problems:
        raise KubeError(f"job spec {spec.name!r} cannot run on a cluster: " + "; ".join(problems))
    overrides = copy.deepcopy(overrides or {})
    workers = spec.trainer.workers
    gpus = int(overrides.get("workers", {}).get("gpusPerPod", 1 if spec.trainer.use_gpu else 0))
    if spec.trainer.use_gpu and gpus < 1:
        raise KubeError("trainer.use_gpu is true but workers.gpusPerPod is 0: set GPUs per worker pod (--gpus-per-pod)")
    if not spec.trainer.use_gpu and gpus > 0:
        raise KubeError(f"workers.gpusPerPod is {gpus} but trainer.use_gpu is false: the GPUs would sit idle; set use_gpu or drop gpusPerPod")
    if gpus and workers % gpus:
        raise KubeError(
            f"trainer.workers ({workers}) is not a multiple of GPUs per pod ({gpus}): "
            f"one Ray Train worker runs per GPU; change one of them"
        )
    values = {
        "jobSpec": spec.model_dump(mode="json"),
        "image": {"repository": "vap-platform", "tag": default_image_tag(spec)},
        "workers": {"replicas": workers // gpus if gpus else workers, "gpusPerPod": gpus},
    }
    if gpus and "tolerations" not in overrides.get("workers", {}):
        values["workers"]["tolerations"] = [GPU_TOLERATION]
    if image:
        overrides["image"] = image_values(image)
    values = deep_merge(values, overrides)
    refuse_credentials(values)
    return values


def _walk(node, path: str = "") -> Iterator[tuple[str, object]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")
    else:
        yield path, node


def refuse_credentials(values: dict) -> None:
    """Values are stored in the release record and shown by `helm get values`: no passwords."""
    for path, value in _walk(values):
        if isinstance(value, str) and "://" in value:
            try:
                has_password = urlparse(value).password is not None
            except ValueError:
                has_password = False
            if has_password:
                raise KubeError(
                    f"values key '{path}' holds a URL with a password: values are stored in the "
                    f"release and shown by helm; put the credential in a Secret "
                    f"(see charts/README.md) and drop it from the URL"
                )


def load_values_files(paths: list[str | Path]) -> dict:
    """Merge YAML values files in order, as `helm -f a -f b` would."""
    merged: dict = {}
    for path in paths:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as err:
            raise KubeError(f"{path}: cannot read the values file ({err.strerror}); check the path") from None
        except yaml.YAMLError as err:
            raise KubeError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
        if not isinstance(data, dict):
            raise KubeError(f"{path}: a values file is a YAML mapping, got {type(data).__name__}")
        merged = deep_merge(merged, data)
    return merged


# --- tools ---------------------------------------------------------------------------------------


def tool(name: str) -> str:
    """helm / kubectl: the venv's pinned copy (installed by `make setup`) before PATH's."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise KubeError(f"{name} not found: run `make setup` (installs helm v3.19.0 and kubectl v1.34.5 into .venv/bin)")
    return found


def _run(cmd: list[str], what: str, timeout: float = 120) -> subprocess.CompletedProcess:
    log.debug("running %s", " ".join(cmd))
    env = {**os.environ, "HELM_DRIVER": os.environ.get("HELM_DRIVER", HELM_DRIVER)}
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise KubeError(f"{what} did not finish in {timeout:.0f} s") from None


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())


# --- render --------------------------------------------------------------------------------------


def render(values: dict, release: str, namespace: str = DEFAULT_NAMESPACE, chart: Path = TRAIN_CHART) -> str:
    """`helm template` the chart with these values; the chart's schema and checks refuse bad values."""
    if not (chart / "Chart.yaml").is_file():
        raise KubeError(f"no chart at {chart}: run from a clone of vap-platform or set VAP_CHARTS_DIR to its charts/ folder")
    with tempfile.TemporaryDirectory(prefix="vap-values-") as tmp:
        values_file = Path(tmp) / "values.yaml"
        values_file.write_text(yaml.safe_dump(values, sort_keys=False))
        cmd = [tool("helm"), "template", release, str(chart), "--namespace", namespace, "--values", str(values_file)]
        proc = _run(cmd, "helm template")
    if proc.returncode != 0:
        raise KubeError(f"{chart.name}: values refused: {explain_helm_error(proc.stderr)}")
    return proc.stdout


# What a bare `'not' failed` from the schema means, by values path.
_NOT_HINTS = {
    r"image\.tag": "'latest' is refused: pin a version tag or set image.digest",
    r"extraEnv\.\d+\.name": "looks like a credential: reference it from a Secret, never as a plain value",
    r"mlflow\.allowedHosts\.\d+": "'*' would switch off MLflow's Host check: list the host names",
}


def explain_helm_error(stderr: str) -> str:
    """helm's schema / `fail` output as one readable line naming each bad values key."""
    text = _one_line(stderr).removeprefix("Error: ")
    text = re.sub(r"values don't meet the specifications of the schema\(s\) in the following chart\(s\): [\w.-]+: ", "", text)
    text = re.sub(r"execution error at \([^)]*\): ", "", text).removesuffix(" Use --debug flag to render out invalid YAML")

    def key(match: re.Match) -> str:
        path = match.group(1).strip("/").replace("/", ".") or "(top level)"
        return f"'{path}':"

    text = re.sub(r"- at '([^']*)':", key, text)
    for pattern, hint in _NOT_HINTS.items():
        text = re.sub(rf"'({pattern})': 'not' failed", rf"'\1': {hint}", text)
    return text


def parse_manifests(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


# --- validate ------------------------------------------------------------------------------------


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


# --- submit --------------------------------------------------------------------------------------


@dataclass
class Submission:
    release: str
    namespace: str
    manifests: str  # the rendered, validated objects
    notes: str = ""  # helm's output after an install (the chart's NOTES.txt)
    dry_run: bool = True

    def summary(self) -> str:
        if self.dry_run:
            return self.manifests
        return self.notes


def prepare(spec_path: str | Path, values_files: list[str | Path] = (), image: str | None = None,
            gpus_per_pod: int | None = None, namespace: str = DEFAULT_NAMESPACE) -> tuple[JobSpec, dict, str]:
    """Check the spec, build values, render and validate: (spec, values, manifests)."""
    spec = load_spec(spec_path)
    overrides = load_values_files(list(values_files))
    if gpus_per_pod is not None:
        overrides = deep_merge(overrides, {"workers": {"gpusPerPod": gpus_per_pod}})
    values = values_from_spec(spec, overrides, image=image)
    manifests = render(values, spec.name, namespace)
    validate(parse_manifests(manifests))
    return spec, values, manifests


def check_cluster() -> str:
    """The current kube context, after checking its API server answers and KubeRay is installed."""
    kubectl = tool("kubectl")
    proc = _run([kubectl, "config", "current-context"], "kubectl config current-context", timeout=20)
    context = proc.stdout.strip() if proc.returncode == 0 else ""
    if not context and os.environ.get("KUBERNETES_SERVICE_HOST"):
        context = "in-cluster"  # a pod (the operator): kubectl and helm use its ServiceAccount
    if not context:
        raise KubeError(
            "no current kube context (KUBECONFIG="
            f"{os.environ.get('KUBECONFIG', '~/.kube/config')}): point kubectl at a cluster "
            "(kubectl config use-context NAME), or render offline with --dry-run (DRY_RUN=1)"
        )
    proc = _run([kubectl, "--request-timeout=10s", "get", "--raw=/readyz"], "kubectl get --raw=/readyz", timeout=30)
    if proc.returncode != 0:
        raise KubeError(
            f"the cluster of kube context '{context}' is not reachable ({_one_line(proc.stderr)[:300]}): "
            "check the network/VPN and credentials, or render offline with --dry-run (DRY_RUN=1)"
        )
    proc = _run([kubectl, "--request-timeout=10s", "api-resources", "--api-group=ray.io", "-o", "name"],
                "kubectl api-resources", timeout=30)
    if "rayjobs.ray.io" not in proc.stdout.split():
        raise KubeError(
            f"KubeRay is not installed in the cluster of context '{context}' (no rayjobs.ray.io API): "
            f"install the KubeRay operator {KUBERAY_VERSION} first"
        )
    return context


# KubeRay's jobDeploymentStatus values after which a RayJob never runs again.
FINISHED = ("Complete", "Failed", "ValidationFailed")


def rayjob_status(name: str, namespace: str) -> str | None:
    """The jobDeploymentStatus of an existing RayJob ("" before KubeRay saw it), None if absent."""
    proc = _run([tool("kubectl"), "--request-timeout=10s", "get", "rayjobs.ray.io", name, "-n", namespace,
                 "--ignore-not-found", "-o", "json"], "kubectl get rayjob", timeout=30)
    if proc.returncode != 0:
        raise KubeError(f"cannot read RayJob {namespace}/{name}: {_one_line(proc.stderr)[:300]}")
    if not proc.stdout.strip():
        return None
    return (yaml.safe_load(proc.stdout).get("status") or {}).get("jobDeploymentStatus", "")


def submit(spec_path: str | Path, values_files: list[str | Path] = (), image: str | None = None,
           gpus_per_pod: int | None = None, namespace: str = DEFAULT_NAMESPACE, dry_run: bool = False,
           replace: bool = False) -> Submission:
    """Check, render, validate, then `helm upgrade --install` into the current kube context.

    With `dry_run` nothing leaves this machine: the validated objects are returned. A finished
    RayJob of the same name never runs again when upgraded: `replace` uninstalls it first
    (training resumes from the run's latest checkpoint); without it that is an error.
    """
    spec, values, manifests = prepare(spec_path, values_files, image, gpus_per_pod, namespace)
    result = Submission(spec.name, namespace, manifests)
    if dry_run:
        return result
    context = check_cluster()
    status = rayjob_status(spec.name, namespace)
    if status in FINISHED:
        if not replace:
            raise KubeError(
                f"RayJob {namespace}/{spec.name} already ran ({status}) and would not start again: "
                f"resubmit with --replace (REPLACE=1; it resumes from the latest checkpoint in "
                f"{spec.storage.uri}) or give the spec another name"
            )
        log.info("uninstalling finished release %s (%s) before resubmitting", spec.name, status)
        proc = _run([tool("helm"), "uninstall", spec.name, "--namespace", namespace, "--wait"], "helm uninstall", timeout=300)
        if proc.returncode != 0:
            raise KubeError(f"helm uninstall {spec.name} failed: {_one_line(proc.stderr).removeprefix('Error: ')}")
    with tempfile.TemporaryDirectory(prefix="vap-values-") as tmp:
        values_file = Path(tmp) / "values.yaml"
        values_file.write_text(yaml.safe_dump(values, sort_keys=False))
        cmd = [tool("helm"), "upgrade", "--install", spec.name, str(TRAIN_CHART),
               "--namespace", namespace, "--values", str(values_file)]
        log.info("installing release %s into namespace %s of context %s", spec.name, namespace, context)
        proc = _run(cmd, "helm upgrade --install", timeout=300)
    if proc.returncode != 0:
        raise KubeError(f"helm upgrade --install {spec.name} failed: {_one_line(proc.stderr).removeprefix('Error: ')}")
    result.notes, result.dry_run = proc.stdout, False
    return result
