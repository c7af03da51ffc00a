"""`vap data …` commands."""

import typer

app = typer.Typer(help="Synthesise, validate and shard VAP-Data.", no_args_is_help=True)
