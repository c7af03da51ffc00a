"""`vap data …` commands: thin wrappers over `vap.datasets` library functions."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Synthesise, validate and shard VAP-Data.", no_args_is_help=True)

CONFIG = typer.Option(..., "--config", "-c", help="Job spec YAML (its `data` and `model` sections).")
PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")


def _shards(config: Path | None, shards: str | None) -> str:
    from vap.errors import DataError
    from vap.spec import load_spec

    if shards:
        return shards
    if config:
        return load_spec(config).data.shards
    raise DataError("give the shards URI (argument) or --config with a job spec")


@app.command()
def synth(
    out: str = typer.Argument(..., help="Folder or s3:// prefix to write videos/ and metadata.csv to."),
    conditions_per_category: int = typer.Option(4, help="Semantic conditions per category (concept, style, motion, camera)."),
    clips_per_condition: int = typer.Option(4, help="Clips per condition (pairs need at least 2)."),
    frames: int = typer.Option(17, help="Frames per clip."),
    fps: float = typer.Option(8.0, help="Frame rate of the clips."),
    size: int = typer.Option(32, help="Width and height in pixels (even)."),
    seed: int = typer.Option(0, help="Seed: the same seed writes the same bytes."),
    progress: bool = PROGRESS,
) -> None:
    """Write a synthetic VAP-Data set (mp4 clips + VAP-Data's metadata.csv)."""
    from vap.datasets.synth import synthesize

    summary = synthesize(out, conditions_per_category=conditions_per_category, clips_per_condition=clips_per_condition,
                         frames=frames, fps=fps, size=size, seed=seed, progress=progress)
    typer.echo(summary.summary())


@app.command()
def report(
    config: Path = CONFIG,
    out: Path = typer.Option(Path("data-report"), help="Folder for report.json, quarantine.csv, distribution.png."),
    progress: bool = PROGRESS,
) -> None:
    """Validate and pair the spec's source clips without encoding; write the dataset report."""
    from vap.datasets.build import source_report
    from vap.spec import load_spec

    rep = source_report(load_spec(config), out, progress=progress)
    typer.echo(f"{rep['clips']['valid']} clips valid, {rep['clips']['rejected']} rejected {rep['quarantine']}; "
               f"pairs {rep['pairs']}; report in {out}")


@app.command()
def build(
    config: Path = CONFIG,
    force: bool = typer.Option(False, help="Rebuild even if a snapshot of the same inputs exists."),
    progress: bool = PROGRESS,
) -> None:
    """Validate, encode and shard the spec's source into a content-addressed snapshot (resumable)."""
    from vap.datasets.build import build_snapshot
    from vap.spec import load_spec

    typer.echo(build_snapshot(load_spec(config), progress=progress, force=force).summary())


@app.command("list")
def list_(
    shards: str = typer.Argument(None, help="Shards URI (default: the spec's data.shards)."),
    config: Path = typer.Option(None, "--config", "-c", help="Job spec YAML."),
) -> None:
    """List the completed snapshots under a shards URI; `*` marks LATEST."""
    from vap.datasets.loader import resolve_snapshot
    from vap.datasets.snapshot import list_snapshots
    from vap.errors import DataError

    root = _shards(config, shards)
    snaps = list_snapshots(root)
    if not snaps:
        raise DataError(f"{root}: no snapshots; run `vap data build`")
    latest = resolve_snapshot(root, "latest")
    for s in snaps:
        typer.echo(f"{'*' if s.uri == latest else ' '} {s.id}  {s.index['created']}  {s.summary().split(' — ')[1]}")


@app.command()
def verify(
    snapshot: str = typer.Argument("latest", help="Snapshot id, or 'latest'."),
    shards: str = typer.Option(None, help="Shards URI (default: the spec's data.shards)."),
    config: Path = typer.Option(None, "--config", "-c", help="Job spec YAML."),
    progress: bool = PROGRESS,
) -> None:
    """Re-hash every shard of a snapshot against its index (sha1 and xxh64)."""
    from vap.datasets.loader import resolve_snapshot
    from vap.datasets.snapshot import verify_snapshot

    uri = resolve_snapshot(_shards(config, shards), snapshot)
    typer.echo(f"{uri}: {verify_snapshot(uri, progress=progress)} shard files ok")
