"""`vap demo`: the whole main job on one machine, on the embedded defaults.

the shipped toy backbone (a CogVideoX-I2V trained on the synthetic world, hub layout) → synthetic
VAP-Data of all 24 conditions → validated, encoded MDS snapshot → Ray Train + DeepSpeed ZeRO-3 on
2 CPU workers → checkpoint in the local object store → MLflow version @challenger → promoted to
@champion → a sample video generated with it → `vap eval` on the val pairs (its table). Every
step is idempotent: a second run reuses what exists.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console

from vap.spec import JobSpec, load_spec

log = logging.getLogger(__name__)
console = Console(stderr=True, soft_wrap=True)


CONDITIONS_PER_CATEGORY, CLIPS_PER_CONDITION = 6, 8  # all 24 conditions: chance alignment is 1/24


def run_demo(config: str | Path = "examples/demo.yaml", steps: int | None = None, eval_pairs: int = 24) -> None:
    from vap.datasets.build import build_snapshot
    from vap.datasets.synth import synthesize
    from vap.errors import ModelError
    from vap.evaluation.evaluate import evaluate
    from vap.registry import Registry, ledger_line
    from vap.training.trainer import train

    spec: JobSpec = load_spec(config)
    if steps is not None:
        t = spec.trainer.model_copy(update={"steps": steps, "checkpoint_every": min(steps, spec.trainer.checkpoint_every)})
        spec = spec.model_copy(update={"trainer": t})

    _stage(1, f"toy {spec.model.family} backbone (shipped, trained on the synthetic world) → {spec.model.backbone}")
    if not (Path(spec.model.backbone) / "model_index.json").is_file():
        raise ModelError(f"{spec.model.backbone}: no diffusers backbone here; point model.backbone at "
                         "training/families/cogvideox/toy-backbone (run the demo from the repository root)")

    _stage(2, f"synthetic VAP-Data (concept, style, motion, camera) → {spec.data.source}")
    synth = synthesize(spec.data.source, frames=spec.data.frames * 2, fps=spec.data.fps, size=spec.data.width,
                       seed=spec.data.seed, conditions_per_category=CONDITIONS_PER_CATEGORY,
                       clips_per_condition=CLIPS_PER_CONDITION)
    console.print(f"   {synth.summary()}")

    _stage(3, f"validate, encode and shard → {spec.data.shards}")
    snapshot = build_snapshot(spec)
    console.print(f"   {snapshot.summary()}")

    _stage(4, f"train: Ray Train, {spec.trainer.workers} workers × DeepSpeed ZeRO-{spec.trainer.zero_stage}, "
              f"{spec.trainer.steps} steps")
    result = train(spec)
    console.print(f"   {result.summary()}")

    _stage(5, f"gated promotion of version {result.version} → @champion (registry.promotion), and the ledger")
    registry = Registry(spec.registry.tracking_uri, spec.registry.model_name, spec.registry.experiment,
                        lock_uri=spec.storage.uri)
    console.print(f"   {registry.promote(result.version, policy=spec.registry.promotion).summary()}")
    for entry in registry.history()[-3:]:
        console.print(f"   ledger {ledger_line(entry)}")

    _stage(6, "generate a sample with models:/…@champion (a slide_right clip's first frame, another slide_right clip as reference)")
    sample = _generate_sample(spec)
    console.print(f"   {sample}")

    _stage(7, f"vap eval models:/…@champion on {eval_pairs} val pairs: reference alignment vs the backbone alone")
    out_dir = Path(spec.storage.uri).parent / "eval"
    report = evaluate(spec, f"models:/{spec.registry.model_name}@champion", "val", eval_pairs, out_dir=out_dir)
    console.print(report.table())

    db = spec.registry.tracking_uri
    console.rule("[bold green]done")
    console.print(
        f"MLflow UI:    .venv/bin/mlflow ui --backend-store-uri {db}   (then open http://127.0.0.1:5000)\n"
        f"checkpoint:   {result.checkpoint_uri}\n"
        f"expert:       {result.checkpoint_uri}/expert  (safetensors, save_pretrained layout)\n"
        f"data report:  {snapshot.uri}/report\n"
        f"sample video: {sample}\n"
        f"eval:         {out_dir}  (eval-val.json, grid-val.png: reference | generated | ground truth)\n"
        f"model:        models:/{spec.registry.model_name}@champion (version {result.version})"
    )


def _generate_sample(spec: JobSpec) -> str:
    """Animate one synthetic clip's first frame with another clip of the same condition as reference."""
    import csv
    import io
    import json

    from vap import storage
    from vap.training.generate import generate

    rows = list(csv.DictReader(io.StringIO(storage.read_bytes(storage.join(spec.data.source, "metadata.csv")).decode())))
    target = next(r for r in rows if r["kind"] == "slide_right")  # a motion: easy to see in 9 frames
    reference = next(r for r in rows if r["video_paths"] == json.loads(target["ref_video_paths"])[0])
    out = str(Path(spec.storage.uri).parent / "sample.mp4")
    return generate(f"models:/{spec.registry.model_name}@champion", storage.join(spec.data.source, target["video_paths"]),
                    target["tar_video_caption"], storage.join(spec.data.source, reference["video_paths"]),
                    reference["tar_video_caption"], out, tracking_uri=spec.registry.tracking_uri,
                    frames=spec.data.frames, fps=spec.data.fps, time_window=spec.data.time_window,
                    height=spec.data.height, width=spec.data.width, steps=25, guidance_scale=1.0, seed=spec.trainer.seed)


def _stage(n: int, text: str) -> None:
    console.rule(f"[bold]{n}/7[/bold] {text}", align="left")
