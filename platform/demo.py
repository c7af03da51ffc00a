"""`vap demo`: the whole main job on one machine, on the embedded defaults.

tiny backbone (hub layout) → synthetic VAP-Data → validated, encoded MDS snapshot → Ray Train +
DeepSpeed ZeRO-3 on 2 CPU workers → checkpoint in the local object store → MLflow version
@challenger → promoted to @champion → a sample video generated with it. Every step is idempotent: a second run reuses what exists.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console

from vap.spec import JobSpec, load_spec

log = logging.getLogger(__name__)
console = Console(stderr=True, soft_wrap=True)


def run_demo(config: str | Path = "examples/demo.yaml", steps: int | None = None) -> None:
    from vap.datasets.build import build_snapshot
    from vap.datasets.synth import synthesize
    from vap.registry import Registry, ledger_line
    from vap.training.tiny import make_tiny_backbone
    from vap.training.trainer import train

    spec: JobSpec = load_spec(config)
    if steps is not None:
        t = spec.trainer.model_copy(update={"steps": steps, "checkpoint_every": min(steps, spec.trainer.checkpoint_every)})
        spec = spec.model_copy(update={"trainer": t})

    _stage(1, f"tiny {spec.model.family} backbone (built from a small config) → {spec.model.backbone}")
    make_tiny_backbone(spec.model.family, spec.model.backbone)

    _stage(2, f"synthetic VAP-Data (concept, style, motion, camera) → {spec.data.source}")
    synth = synthesize(spec.data.source, frames=spec.data.frames * 2, fps=spec.data.fps, size=spec.data.width,
                       seed=spec.data.seed)
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

    _stage(6, "generate a sample with models:/…@champion (a tiny random backbone: expect abstract motion)")
    sample = _generate_sample(spec)
    console.print(f"   {sample}")

    db = spec.registry.tracking_uri
    console.rule("[bold green]done")
    console.print(
        f"MLflow UI:    .venv/bin/mlflow ui --backend-store-uri {db}   (then open http://127.0.0.1:5000)\n"
        f"checkpoint:   {result.checkpoint_uri}\n"
        f"expert:       {result.checkpoint_uri}/expert  (safetensors, save_pretrained layout)\n"
        f"data report:  {snapshot.uri}/report\n"
        f"sample video: {sample}\n"
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
    target = rows[0]
    reference = next(r for r in rows if r["video_paths"] == json.loads(target["ref_video_paths"])[0])
    out = str(Path(spec.storage.uri).parent / "sample.mp4")
    return generate(f"models:/{spec.registry.model_name}@champion", storage.join(spec.data.source, target["video_paths"]),
                    target["tar_video_caption"], storage.join(spec.data.source, reference["video_paths"]),
                    reference["tar_video_caption"], out, tracking_uri=spec.registry.tracking_uri,
                    frames=spec.data.frames, fps=spec.data.fps, time_window=spec.data.time_window,
                    height=spec.data.height, width=spec.data.width, steps=10, seed=spec.trainer.seed)


def _stage(n: int, text: str) -> None:
    console.rule(f"[bold]{n}/6[/bold] {text}", align="left")
