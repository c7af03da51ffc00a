"""A job spec as a Helm release of `charts/vap-train`: `prepare` checks, renders and validates
offline; `submit` then runs `helm upgrade --install` in the current kube context."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from vap.errors import KubeError
from vap.kube.cluster import FINISHED, check_cluster, rayjob_status
from vap.kube.helm import DEFAULT_NAMESPACE, TRAIN_CHART, parse_manifests, render
from vap.kube.tools import one_line, run, tool
from vap.kube.validation import validate
from vap.kube.values import deep_merge, load_values_files, values_from_spec
from vap.spec import JobSpec, load_spec

log = logging.getLogger(__name__)


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
        proc = run([tool("helm"), "uninstall", spec.name, "--namespace", namespace, "--wait"], "helm uninstall", timeout=300)
        if proc.returncode != 0:
            raise KubeError(f"helm uninstall {spec.name} failed: {one_line(proc.stderr).removeprefix('Error: ')}")
    with tempfile.TemporaryDirectory(prefix="vap-values-") as tmp:
        values_file = Path(tmp) / "values.yaml"
        values_file.write_text(yaml.safe_dump(values, sort_keys=False))
        cmd = [tool("helm"), "upgrade", "--install", spec.name, str(TRAIN_CHART),
               "--namespace", namespace, "--values", str(values_file)]
        log.info("installing release %s into namespace %s of context %s", spec.name, namespace, context)
        proc = run(cmd, "helm upgrade --install", timeout=300)
    if proc.returncode != 0:
        raise KubeError(f"helm upgrade --install {spec.name} failed: {one_line(proc.stderr).removeprefix('Error: ')}")
    result.notes, result.dry_run = proc.stdout, False
    return result
