"""`vap model …` commands."""

import typer

app = typer.Typer(help="Inspect and build VAP models.", no_args_is_help=True)


@app.command("tiny")
def tiny(
    family: str = typer.Argument(..., help="A family of vap.training.families: cogvideox or wan."),
    out: str = typer.Argument(..., help="Folder to write the tiny backbone to (hub layout)."),
    seed: int = typer.Option(0, help="Seed for the random weights."),
) -> None:
    """Write a tiny random backbone of FAMILY in the real hub layout (for tests and the demo)."""
    from vap.training.families import family_names
    from vap.training.tiny import make_tiny_backbone

    if family not in family_names():
        raise typer.BadParameter(f"unknown family {family!r}; choose one of {family_names()}")
    typer.echo(make_tiny_backbone(family, out, seed=seed))


@app.command("toy")
def toy(
    out: str = typer.Argument(..., help="Folder to write the trained toy CogVideoX-I2V backbone to (hub layout)."),
    seed: int = typer.Option(0, help="Seed of the clips, the initial weights and the batches."),
) -> None:
    """Train a toy CogVideoX-I2V backbone on synthetic clips (VAE, then transformer; ≈21 min on 2 shared CPUs).

    Writes the diffusers hub layout plus recipe.json (recipe and content key), quality.json
    (held-out VAE PSNR, continuation PSNR/MSE against baselines) and grid.png. A copy trained
    with seed 0 ships in the package (vap.training.families.cogvideox.toy.shipped_path()).
    """
    from vap.training.families.cogvideox.toy import build

    typer.echo(build(out, seed=seed))


@app.command("recogniser")
def recogniser(
    out: str = typer.Argument(..., help="Folder to write the condition recogniser to (the shipped one: "
                                        "platform/evaluation/weights)."),
) -> None:
    """Train the condition recogniser `vap eval` judges with (seeded, on clean clips and their toy-VAE
    round trips; ≈40 min on 2 shared CPUs) and print its held-out accuracy; a folder already holding
    this recipe's build is left as it is."""
    import json

    from vap.evaluation.recogniser import build_recogniser

    typer.echo(json.dumps(build_recogniser(out), indent=1))


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


@app.command("generate")
def generate(
    model: str = typer.Option(..., "--model", "-m", help="models:/<name>@<alias> (or /<version>), or a checkpoint "
                                                          "/ expert folder: path, file:// or s3:// URI."),
    image: str = typer.Option(..., help="First frame: an image (or a video: its first frame), path or URI."),
    prompt: str = typer.Option(..., help="Caption of the video to generate."),
    reference: list[str] = typer.Option(..., help="Reference video (mp4) showing the semantic condition, path or "
                                                  "URI; repeat for several references (CogVideoX)."),
    reference_prompt: list[str] = typer.Option(..., help="Caption of the reference video (one per --reference)."),
    out: str = typer.Option("vap.mp4", "--out", "-o", help="Where to write the mp4: path or URI."),
    backbone: str = typer.Option(None, help="Backbone (default: the one the expert / model version records)."),
    tracking_uri: str = typer.Option(None, envvar="MLFLOW_TRACKING_URI", help="MLflow tracking URI (models:/)."),
    frames: int = typer.Option(49, help="Video frames (4k+1)."),
    fps: float = typer.Option(16.0, help="Frame rate of the reference sampling and of the output."),
    time_window: str = typer.Option("evenly", help="Reference frames: evenly over the whole clip (as trained, "
                                                   "data.time_window) or head (its first FRAMES)."),
    height: int = typer.Option(None, help="Output height in pixels (default: the family's, 480)."),
    width: int = typer.Option(None, help="Output width in pixels (default: the family's, CogVideoX 720, Wan 832)."),
    steps: int = typer.Option(50, help="Denoising steps."),
    guidance_scale: float = typer.Option(
        None, help="Classifier-free guidance (negative prompts, reference kept); default the family's: "
                   "CogVideoX 6, Wan 5."),
    dynamic_cfg: bool = typer.Option(None, "--dynamic-cfg/--no-dynamic-cfg",
                                     help="Ramp the guidance over the steps (default: CogVideoX yes, Wan no)."),
    reference_guidance_scale: float = typer.Option(
        0.0, help="Extra push toward the reference (with vs without it); raise it if the reference is ignored."),
    negative_prompt: str = typer.Option(None, help="Negative caption of the target (default: the authors')."),
    reference_negative_prompt: str = typer.Option(
        None, help="Negative caption of the reference in the unconditional branch (default: the authors')."),
    seed: int = typer.Option(0, help="Noise seed."),
    reference_attention: str = typer.Option(None, help="joint or one_way (default: what the expert was trained with)."),
) -> None:
    """Generate a video that starts at IMAGE and carries REFERENCE's semantics; write an mp4."""
    from vap.training.generate import generate as run

    if len(reference) != len(reference_prompt):
        raise typer.BadParameter(f"{len(reference)} --reference but {len(reference_prompt)} --reference-prompt; "
                                 "give one caption per reference")
    many = len(reference) > 1
    typer.echo(run(model, image, prompt, reference if many else reference[0],
                   reference_prompt if many else reference_prompt[0], out, backbone=backbone,
                   tracking_uri=tracking_uri, frames=frames, fps=fps, time_window=time_window, height=height,
                   width=width, steps=steps,
                   guidance_scale=guidance_scale, reference_guidance_scale=reference_guidance_scale,
                   negative_prompt=negative_prompt, reference_negative_prompt=reference_negative_prompt,
                   dynamic_cfg=dynamic_cfg, seed=seed, reference_attention=reference_attention))
