"""`vap model …` commands."""

import typer

app = typer.Typer(help="Inspect and build VAP models.", no_args_is_help=True)


@app.command("tiny")
def tiny(
    family: str = typer.Argument(..., help="cogvideox or wan"),
    out: str = typer.Argument(..., help="Folder to write the tiny backbone to (hub layout)."),
    seed: int = typer.Option(0, help="Seed for the random weights."),
) -> None:
    """Write a tiny random backbone of FAMILY in the real hub layout (for tests and the demo)."""
    from vap.training.tiny import BUILDERS, make_tiny_backbone

    if family not in BUILDERS:
        raise typer.BadParameter(f"unknown family {family!r}; choose one of {sorted(BUILDERS)}")
    typer.echo(make_tiny_backbone(family, out, seed=seed))
