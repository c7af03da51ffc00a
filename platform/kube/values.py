"""Job spec → chart values of `charts/vap-train`: image, workers per pod, the checks that a spec
can run on a cluster at all, and no credentials in values (they are stored in the release)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from urllib.parse import urlparse

import yaml

from vap.errors import KubeError
from vap.spec import JobSpec

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


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


def cluster_problems(spec: JobSpec) -> list[str]:
    """What in a spec only makes sense on this machine: pods cannot read its disk or its sqlite file."""
    from vap.storage import is_storage_location

    problems = []
    uris = {"storage.uri": spec.storage.uri, "data.shards": spec.data.shards, "data.source": spec.data.source}
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
