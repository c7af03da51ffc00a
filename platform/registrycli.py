"""`vap promote`, `vap rollback`, `vap registry history|audit`: the model registry from the shell
(a thin shell over `vap.registry`)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Inspect the model registry: the promotion ledger and its audit.", no_args_is_help=True)

CONFIG = typer.Option(None, "--config", "-c", help="Job spec YAML (tracking URI, model name, promotion gate, lock in storage.uri).")
TRACKING = typer.Option(None, help="MLflow tracking URI (overrides the spec; default MLFLOW_TRACKING_URI).")
MODEL = typer.Option(None, help="Registered model name (overrides the spec).")


def _registry(config, tracking_uri, model_name):
    from vap.registry import registry_from

    return registry_from(config, tracking_uri, model_name)


def promote(
    config: Path = CONFIG, tracking_uri: str = TRACKING, model_name: str = MODEL,
    version: str = typer.Option(None, help="Version to promote; default: the one aliased 'challenger'."),
    alias: str = typer.Option("champion", help="Alias to move."),
    force: bool = typer.Option(False, "--force", help="Move the alias even if the gate fails (needs --reason)."),
    reason: str = typer.Option("", help="Why: recorded in the ledger (required with --force)."),
) -> None:
    """Gated promotion: compare the version with the alias's holder under the spec's
    registry.promotion policy (default: eval_loss, equal or better) and move the alias only if it
    passes. A refusal names each failing metric with both values and the margin (exit code 1).
    Every decision is appended to the ledger (`vap registry history`)."""
    moved = _registry(config, tracking_uri, model_name).promote(version=version, alias=alias, force=force, reason=reason)
    typer.echo(moved.summary())
    if not moved.moved:
        raise typer.Exit(1)


def rollback(
    config: Path = CONFIG, tracking_uri: str = TRACKING, model_name: str = MODEL,
    alias: str = typer.Option("champion", help="Alias to move back."),
    reason: str = typer.Option("", help="Why: recorded in the ledger."),
) -> None:
    """Point the alias back at the version it held before its latest promotion (read from the
    ledger); a second rollback goes one further back."""
    typer.echo(_registry(config, tracking_uri, model_name).rollback(alias=alias, reason=reason).summary())


@app.command("history")
def history(
    name: str = typer.Argument(None, help="Registered model name (default: the spec's)."),
    config: Path = CONFIG, tracking_uri: str = TRACKING,
) -> None:
    """Every promotion decision on a model, oldest first: who, when, what, why."""
    from vap.registry import ledger_line

    for entry in _registry(config, tracking_uri, name).history():
        typer.echo(ledger_line(entry))


@app.command("audit")
def audit(
    name: str = typer.Argument(None, help="Registered model name (default: the spec's)."),
    config: Path = CONFIG, tracking_uri: str = TRACKING,
) -> None:
    """Report aliases moved outside `vap promote` (MLflow OSS has no alias permissions); exit 1 if any."""
    problems = _registry(config, tracking_uri, name).audit()
    for line in problems:
        typer.echo(line)
    if problems:
        raise typer.Exit(1)
    typer.secho("aliases match the ledger", fg="green", err=True)


def register(
    run: str = typer.Option(..., "--run", help="MLflow run id of the `vap train` job to register."),
    config: Path = typer.Option(..., "--config", "-c", help="The job spec the run was trained with."),
    tracking_uri: str = TRACKING,
) -> None:
    """Register a finished training run as a new version (@challenger) when its registration at
    the end of `vap train` failed (tracking server unreachable): the same lineage and MLflow model,
    from what training left beside its checkpoints. A run registered already prints its version."""
    from vap.registry import register_run
    from vap.spec import load_spec

    registry = _registry(config, tracking_uri, None)
    version = register_run(registry, load_spec(config), run)
    typer.echo(f"registered {registry.model_name} version {version} (@challenger) from run {run}")
