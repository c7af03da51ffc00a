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
    from vap.evalcli import eval_command
    from vap.kubecli import app as k8s_app
    from vap.registrycli import app as registry_app
    from vap.registrycli import promote, register, rollback
    from vap.retraincli import retrain
    from vap.training.cli import app as model_app
    from vap.training.cli import generate

    app.add_typer(data_app, name="data")
    app.add_typer(model_app, name="model")
    app.add_typer(k8s_app, name="k8s")
    app.add_typer(registry_app, name="registry")
    app.command("promote")(promote)
    app.command("rollback")(rollback)
    app.command("register")(register)
    app.command("generate")(generate)  # `vap generate` = `vap model generate`, the common case
    app.command("retrain")(retrain)  # what a scheduled run executes
    app.command("eval")(eval_command)


@spec_app.command("check")
def spec_check(file: Path = typer.Argument(..., help="Job spec YAML to validate.")) -> None:
    """Validate a job spec; print it normalised (defaults filled in) or the problems found."""
    from vap.spec import dump_spec, load_spec

    typer.echo(dump_spec(load_spec(file)), nl=False)
    typer.secho(f"{file}: ok", fg="green", err=True)


@app.command()
def train(
    config: Path = typer.Option(..., "--config", "-c", help="Job spec YAML."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides of the spec, validated by the same schema: "
                                                     "trainer.steps=5 trainer.workers=1"),
    resume: bool = typer.Option(True, help="Resume from the run's latest committed checkpoint if one exists."),
) -> None:
    """Train an expert with Ray Train + DeepSpeed, checkpoint it and register it in MLflow."""
    from vap.spec import load_spec
    from vap.training.trainer import train as run_training

    result = run_training(load_spec(config, overrides or ()), resume=resume)
    typer.echo(result.summary())


@app.command()
def plan(
    config: Path = typer.Option(None, "--config", "-c", help="Job spec YAML: backbone, blocks, data shape, trainer."),
    backbone: str = typer.Option(None, help="Shipped config (cogvideox-5b-i2v, wan2.1-i2v-14b-480p), hub id, path or transformer config.json."),
    blocks: str = typer.Option(None, help="Expert blocks: default, all, or a comma list (e.g. 0,4,8)."),
    gpus: int = typer.Option(None, help="GPUs (data-parallel ranks). Default: the spec's workers, else 8."),
    gpu_memory: float = typer.Option(None, help="Memory per GPU in GiB (default 80)."),
    frames: int = typer.Option(None, help="Video frames (paper: 49)."),
    height: int = typer.Option(None, help="Height in pixels (paper: 480)."),
    width: int = typer.Option(None, help="Width in pixels (paper: 720 CogVideoX, 832 Wan)."),
    batch: int = typer.Option(None, help="Pairs per GPU per step."),
    references: int = typer.Option(None, help="Reference videos per target."),
    zero_stage: int = typer.Option(None, help="DeepSpeed ZeRO stage (0-3)."),
    offload_optimizer: bool = typer.Option(None, "--offload-optimizer/--no-offload-optimizer", help="Optimizer state on CPU."),
    offload_params: bool = typer.Option(None, "--offload-params/--no-offload-params", help="Parameters on CPU."),
    checkpointing: bool = typer.Option(None, "--checkpointing/--no-checkpointing", help="Activation checkpointing per block."),
    precision: str = typer.Option(None, help="bf16 (GPU) or fp32."),
    mfu: float = typer.Option(None, help="Model FLOPs utilisation assumed for the step time (default 0.35)."),
    peak_tflops: float = typer.Option(None, help="GPU peak TFLOP/s in that precision (default 989, H100 bf16 dense)."),
    json_out: Path = typer.Option(None, "--json", help="Also write the plan as JSON here ('-' for stdout only)."),
) -> None:
    """Memory per GPU, step time and cost of a job before it is submitted: frozen and trainable
    parameters, gradients and optimizer state under ZeRO, the largest gathered layer,
    activations of the joint sequence (with and without checkpointing), buffers; whether it fits
    and the cheapest change that makes it fit; step time from FLOPs at a stated MFU and GPU-hours
    per 1,000 steps. Flags override the spec; without a spec the defaults are the paper's
    CogVideoX setup (49 frames, 480×720, 8 GPUs × 80 GiB)."""
    from vap.plan import Setup, setup_from_spec
    from vap.plan import plan as make_plan

    flags = dict(backbone=backbone, gpus=gpus, gpu_memory_gib=gpu_memory, frames=frames, height=height, width=width,
                 batch=batch, references=references, zero_stage=zero_stage, offload_optimizer=offload_optimizer,
                 offload_params=offload_params, activation_checkpointing=checkpointing, precision=precision, mfu=mfu,
                 peak_tflops=peak_tflops,
                 blocks=None if blocks is None else blocks if blocks in ("default", "all") else
                 [int(b) for b in blocks.split(",")])
    if config is not None:
        from vap.spec import load_spec

        setup = setup_from_spec(load_spec(config), **flags)
    else:
        setup = Setup(**{k: v for k, v in flags.items() if v is not None})
    result = make_plan(setup)
    if json_out is not None and str(json_out) == "-":
        typer.echo(result.to_json())
        return
    typer.echo(result.table())
    if json_out is not None:
        json_out.write_text(result.to_json() + "\n")


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
