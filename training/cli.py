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


@app.command("info")
def info(
    source: list[str] = typer.Argument(None, help="Shipped config names (default: all of them), or backbone "
                                                   "paths / hub ids / file:// or s3:// URIs."),
    blocks: str = typer.Option("default", help="Expert blocks: default (the paper's), all, or e.g. 0,4,8."),
) -> None:
    """Print backbone and expert parameter counts (no weights are loaded)."""
    from vap.training.info import model_info, shipped

    chosen = blocks if blocks in ("default", "all") else [int(b) for b in blocks.split(",") if b.strip()]
    for name in source or list(shipped()):
        typer.echo(model_info(name, blocks=chosen).summary())
