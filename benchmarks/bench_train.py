"""Training benchmarks, measured side by side in one run; results to benchmarks/results/train.json.

P2  platform samples/s (`vap train`: Ray Train, 2 workers, DeepSpeed ZeRO-3 over gloo) ÷ a bare
    single-process torch loop (the same VAP model, objective, AdamW and snapshot, on the same
    cores) (goal ≥ 0.9). Platform samples/s is the median of the per-step `samples_per_s` the
    trainer logs (steps after the first, so start-up and checkpoints are not counted; the step
    time includes the loss all-reduce and metric collectives); the bare loop is timed over the
    same number of steps after one warm-up step. On 2 shared CPU cores, the two ranks compete
    for those cores — the ratio says what ZeRO-3's gathers and reduce-scatters over gloo cost here.
P5  checkpoint bytes ÷ trainable-state bytes (goal ≈ 1.0): the DeepSpeed state a committed
    checkpoint stores (all ranks' ZeRO partitions, the model-states file, frozen backbone
    excluded) ÷ fp32 expert parameters + AdamW's two moments (12 bytes a parameter). The
    serving copy of the expert (`expert/`, 4 bytes a parameter) is reported separately.

    .venv/bin/python benchmarks/bench_train.py [--quick] [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger("bench_train")
RESULTS = Path(__file__).parent / "results" / "train.json"


def make_world(work: Path, steps: int):
    from vap.datasets.build import build_snapshot
    from vap.datasets.synth import synthesize
    from vap.spec import parse_spec
    from vap.training.tiny import make_tiny_backbone

    backbone = make_tiny_backbone("cogvideox", work / "tiny-cogvideox")
    spec = parse_spec({
        "name": "bench-train",
        "model": {"family": "cogvideox", "backbone": str(backbone), "expert": {"blocks": "all"}},
        "data": {"source": str(work / "raw"), "shards": str(work / "shards"), "frames": 9, "fps": 8,
                 "height": 32, "width": 32},
        "trainer": {"workers": 2, "zero_stage": 3, "steps": steps, "checkpoint_every": steps, "lr": 1e-3,
                    "caption_dropout": 0.0},
        "storage": {"uri": str(work / "runs")},
        "registry": {"tracking_uri": f"sqlite:///{work}/mlflow.db", "model_name": "bench-train-expert"},
    })
    synthesize(spec.data.source, conditions_per_category=2, clips_per_condition=3, frames=17, fps=8, size=32,
               progress=False)
    build_snapshot(spec, progress=False)
    return spec


def bare_loop(spec, steps: int, work: Path) -> float:
    """Samples/s of a plain single-process loop: model, objective, AdamW, the same loader."""
    from vap.datasets.loader import load_null_text, make_loader, resolve_snapshot
    from vap.training.families import get_family
    from vap.training.model import load_vap

    torch.manual_seed(0)
    model = load_vap(spec.model)
    objective = get_family(spec.model.family).objective(spec.model.backbone)
    optimizer = torch.optim.AdamW(list(model.expert_parameters()), lr=spec.trainer.lr, betas=spec.trainer.adam_betas)
    snapshot = resolve_snapshot(spec.data.shards, spec.data.snapshot)
    loader = make_loader(snapshot, "train", batch_size=1, seed=0, local_cache=work / "bare-cache")
    null_text = load_null_text(snapshot)

    def batches():
        while True:
            yield from loader

    it = batches()

    def step(i: int) -> None:
        loss = objective(model, next(it), generator=torch.Generator().manual_seed(i), caption_dropout=0.0,
                         null_text=null_text)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.expert_parameters()), spec.trainer.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(0)  # warm-up
    t = time.perf_counter()
    for i in range(1, steps):
        step(i)
    return (steps - 1) / (time.perf_counter() - t)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="6 steps")
    args = parser.parse_args()
    steps = 6 if args.quick else args.steps
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)  # as each Ray worker runs (one core each)

    from vap.registry import Registry
    from vap.training.model import load_vap
    from vap.training.trainer import train

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        spec = make_world(work, steps)
        bare = bare_loop(spec, steps, work)
        result = train(spec, progress=False)
        history = Registry(spec.registry.tracking_uri, spec.registry.model_name).metric_history(
            result.run_id, "samples_per_s")
        platform = statistics.median(v for s, v in sorted(history) if s > 1)
        ckpt = Path(result.checkpoint_uri)
        zero_bytes = dir_bytes(ckpt / "vap")
        expert_params = sum(p.numel() for p in load_vap(spec.model).expert_parameters())
        trainable = expert_params * 4 * 3
        results = {
            "P2": {"ratio": round(platform / bare, 3), "platform_samples_per_s": round(platform, 3),
                   "bare_samples_per_s": round(bare, 3), "workers": 2, "zero_stage": 3, "steps": steps,
                   "goal": ">= 0.9"},
            "P5": {"ratio": round(zero_bytes / trainable, 3), "checkpoint_zero_bytes": zero_bytes,
                   "trainable_state_bytes": trainable, "expert_parameters": expert_params,
                   "serving_expert_bytes": dir_bytes(ckpt / "expert"), "goal": "~ 1.0"},
        }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    log.info(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
