"""`vap`: the command line. A thin shell: every command calls one library function.

Heavy imports (torch, ray, mlflow) happen inside commands so `vap --help` stays fast.
A `VapError` becomes one line on stderr and exit code 2; anything else keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from vap.errors import VapError

app = typer.Typer(
    help="Train, register and ship Video-As-Prompt (VAP) experts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
spec_app = typer.Typer(help="Check job specs.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")


def _register_subapps() -> None:
    # Each part of the platform owns its own commands.
    from vap.datasets.cli import app as data_app
    from vap.kubecli import app as k8s_app
    from vap.training.cli import app as model_app
    from vap.training.cli import generate

    app.add_typer(data_app, name="data")
    app.add_typer(model_app, name="model")
    app.add_typer(k8s_app, name="k8s")
    app.command("generate")(generate)  # `vap generate` = `vap model generate`, the common case


@spec_app.command("check")
def spec_check(file: Path = typer.Argument(..., help="Job spec YAML to validate.")) -> None:
    """Validate a job spec; print it normalised (defaults filled in) or the problems found."""
    from vap.spec import dump_spec, load_spec

    typer.echo(dump_spec(load_spec(file)), nl=False)
    typer.secho(f"{file}: ok", fg="green", err=True)


@app.command()
def train(
    config: Path = typer.Option(..., "--config", "-c", help="Job spec YAML."),
    resume: bool = typer.Option(True, help="Resume from the run's latest checkpoint if one exists."),
) -> None:
    """Train an expert with Ray Train + DeepSpeed, checkpoint it and register it in MLflow."""
    from vap.spec import load_spec
    from vap.training.trainer import train as run_training

    result = run_training(load_spec(config), resume=resume)
    typer.echo(result.summary())


@app.command()
def promote(
    config: Path = typer.Option(None, "--config", "-c", help="Job spec YAML (for tracking URI and model name)."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (overrides the spec)."),
    model_name: str = typer.Option(None, help="Registered model name (overrides the spec)."),
    version: str = typer.Option(None, help="Version to promote; default: the one aliased 'challenger'."),
    alias: str = typer.Option("champion", help="Alias to move."),
) -> None:
    """Move the `champion` alias (or --alias) to a model version, recording the previous holder."""
    from vap.registry import Registry, registry_from

    registry: Registry = registry_from(config, tracking_uri, model_name)
    moved = registry.promote(version=version, alias=alias)
    typer.echo(moved.summary())


@app.command()
def demo(
    config: Path = typer.Option(Path("examples/demo.yaml"), "--config", "-c", help="Job spec of the demo."),
    steps: int = typer.Option(None, help="Training steps (default: the spec's)."),
) -> None:
    """Run the whole loop on this machine: tiny backbone → synthetic data → shards → train →
    checkpoint → register (@challenger) → promote (@champion). Idempotent."""
    from vap.demo import run_demo

    run_demo(config, steps=steps)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "botocore", "filelock", "alembic", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _register_subapps()
    try:
        app()
    except VapError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
