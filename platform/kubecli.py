"""`vap k8s …`: render, validate and submit training jobs (a thin shell over `vap.kube`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

app = typer.Typer(help="Render, validate and submit training jobs to Kubernetes (KubeRay RayJob via Helm).",
                  no_args_is_help=True)

_SPEC = typer.Argument(..., help="Job spec YAML (checked before anything is rendered).")
_VALUES = typer.Option([], "--values", "-f", help="Cluster settings as a values file of charts/vap-train (repeatable; later wins).")
_IMAGE = typer.Option(None, "--image", help="Training image, repository:tag or repository@sha256:… (default vap-platform:<version>-cpu|cuda).")
_GPUS = typer.Option(None, "--gpus-per-pod", min=0, help="GPUs per worker pod (default 1: one pod per Ray Train worker).")
_NS = typer.Option("vap", "--namespace", "-n", help="Namespace of the release.")


@app.command()
def render(spec: Path = _SPEC, values: list[Path] = _VALUES, image: str = _IMAGE,
           gpus_per_pod: int = _GPUS, namespace: str = _NS,
           output: Path = typer.Option(None, "--output", "-o", help="Write the manifests here instead of stdout.")) -> None:
    """Render the RayJob (and its ConfigMap) for a spec, validate it offline and print it."""
    from vap import kube

    _spec, _values, manifests = kube.prepare(spec, values, image, gpus_per_pod, namespace)
    _emit(manifests, output)


@app.command()
def validate(files: list[Path] = typer.Argument(None, help="Manifest files (multi-document YAML); none: read stdin.")) -> None:
    """Validate rendered manifests offline: built-in kinds at Kubernetes 1.34, RayJob/RayCluster against KubeRay v1.7.0 CRDs (unknown fields are errors)."""
    from vap import kube

    objects = []
    for text in ([f.read_text() for f in files] if files else [sys.stdin.read()]):
        objects += kube.parse_manifests(text)
    kube.validate(objects)
    typer.secho(f"{len(objects)} object(s) valid", fg="green", err=True)


@app.command()
def submit(spec: Path = _SPEC, values: list[Path] = _VALUES, image: str = _IMAGE,
           gpus_per_pod: int = _GPUS, namespace: str = _NS,
           dry_run: bool = typer.Option(False, "--dry-run", help="Render and validate offline and print the objects; contact no cluster."),
           replace: bool = typer.Option(False, "--replace", help="If a RayJob of this name already finished, uninstall it first (training resumes from its latest checkpoint).")) -> None:
    """Check the spec, render, validate, then `helm upgrade --install` into the current kube context."""
    from vap import kube

    result = kube.submit(spec, values, image, gpus_per_pod, namespace, dry_run=dry_run, replace=replace)
    _emit(result.summary(), None)
    if not dry_run:
        typer.secho(f"release {result.release} installed in namespace {result.namespace}", fg="green", err=True)


@app.command("prepare-tracking")
def prepare_tracking() -> None:
    """Create MLflow's artifact bucket and migrate its database (the platform chart's hook).

    Reads MLFLOW_BACKEND_STORE_URI and MLFLOW_ARTIFACTS_DESTINATION from the environment, so the
    database password never appears in a command line.
    """
    from vap import registry

    for line in registry.prepare_tracking_store(os.environ.get("MLFLOW_BACKEND_STORE_URI", ""),
                                                os.environ.get("MLFLOW_ARTIFACTS_DESTINATION", "")):
        typer.echo(line)


def _emit(text: str, output: Path | None) -> None:
    if output:
        output.write_text(text)
        typer.secho(f"wrote {output}", fg="green", err=True)
    else:
        typer.echo(text, nl=False)
