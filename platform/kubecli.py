"""`vap k8s …` commands: render, validate and submit the training chart."""

import typer

app = typer.Typer(help="Render, validate and submit training jobs to Kubernetes.", no_args_is_help=True)
