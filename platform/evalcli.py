"""`vap eval`: the command over `vap.evaluation.evaluate.evaluate`."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = """Evaluate an expert on held-out pairs of the spec's snapshot: does it
carry the reference video's condition into a new video?

MODEL: models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint URI.
Each pair is generated from the target's first frame and a caption that
does not name the condition (the reference's caption likewise), three
times with the same noise: with the pair's reference (VAP), with no
reference (the backbone alone), and with another condition's clip
(mismatched). Per condition, category and overall: mean and bootstrap
95 % interval of

  alignment_top1 / _prob  the condition recogniser's top-1 agrees with
                          the reference's condition / its probability
                          of that condition (chance: 1 / 24)
  baseline_backbone.*     the same for the backbone alone
  mismatched.*            the same with another condition's reference,
                          judged against THAT condition: high = the
                          output follows the reference, not priors
  copying                 pixel similarity to the reference's frames
                          minus to the target's own continuation
                          (> 0: it copies the reference's pixels)
  motion_smoothness*      inner frames re-created from their neighbours
                          along optical flow (1 = smooth)
  dynamic_degree*         1 when enough frame pairs move (VBench's rule)
  temporal_flicker*       1 - mean |frame t - frame t-1| / 255
  loss                    validation denoising loss (fixed noise)
  * CPU proxies of VBench's metrics (OpenCV Farneback optical flow):
    comparable between runs of this platform only.

Prints a markdown table; writes OUT/eval-SPLIT.json and a grid
(reference | generated | ground truth) as OUT/grid-SPLIT.png and .mp4.
For a registered version the metrics (eval.SPLIT.*) and those files go
on its MLflow run, where `vap promote` can gate on them. Re-running
recomputes and overwrites them."""


def eval_command(
    model: str = typer.Argument(..., help="models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint URI."),
    config: Path = typer.Option(..., "--config", "-c", help="Job spec: its snapshot, data shape and registry."),
    split: str = typer.Option("val", help="val (held-out clips of trained conditions) or unseen (zero-shot)."),
    pairs: int = typer.Option(None, min=1, help="Evaluate the first N pairs of the split (default: all)."),
    steps: int = typer.Option(25, min=1, help="Denoising steps per generation."),
    guidance: float = typer.Option(1.0, help="Classifier-free guidance scale (<= 1: off)."),
    reference_guidance: float = typer.Option(0.0, help="Push along (with - without reference) in the runs with "
                                                       "a reference (the pipeline's reference_guidance_scale)."),
    seed: int = typer.Option(0, help="Seed of the generations' noise."),
    out: Path = typer.Option(Path("eval"), "--out", "-o", help="Folder for the JSON and the grids."),
    record: bool = typer.Option(True, help="Record the metrics on the model version (models:/ only)."),
    recogniser: Path = typer.Option(None, help="Recogniser folder (default: the shipped one)."),
) -> None:
    from vap.evaluation.evaluate import evaluate

    report = evaluate(config, model, split, pairs, out_dir=out, steps=steps, guidance_scale=guidance, seed=seed,
                      record=record, recogniser=recogniser, reference_guidance_scale=reference_guidance)
    typer.echo(report.table())
    typer.echo(f"\nwrote {out}/eval-{split}.json, {out}/grid-{split}.png, {out}/grid-{split}.mp4", err=True)


eval_command.__doc__ = HELP
