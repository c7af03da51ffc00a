"""Inference cost of VAP, measured side by side in one run; results to benchmarks/results/inference.json.

For each family: generate time ÷ backbone-only generate time (the same pipeline with no
reference: the backbone's own image-to-video) for
    joint            the paper's design: both streams in one attention, every step
    one_way          the reference attends only to itself (target attends to both)
    one_way + cache  one_way with the reference keys/values computed at the first step only
on the same model, inputs and steps (classifier-free guidance on, as in use), for a whole
generation (encoders, denoising loop, VAE decode) and for one denoising step alone. Goal for the
cache: ≤ 1.2 (the paper's joint design is ≈ 2). Ratios are of CPU time with one torch thread:
on a machine shared with other jobs wall time is noise, and with several threads OpenMP's
spin-waiting turns contention into CPU time (measured: 7× more CPU for the same forward).
Wall-time ratios are reported too. Each variant runs `repeats` times, interleaved; medians
are compared.

The tiny test backbones are too small for compute to matter (Python overhead dominates), so the
transformer is widened (3 heads × 64, 6 blocks, the family's default expert blocks) while the
VAE and text encoders stay tiny; `--scale tiny` measures the test backbones as they are.

    .venv/bin/python benchmarks/bench_inference.py [--steps 10] [--repeats 3] [--scale small]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("bench_inference")
RESULTS = Path(__file__).parent / "results" / "inference.json"
# pixels per family: enough video tokens (≈ 720 a stream) that attention and MLPs dominate
SIZES = {"cogvideox": (48, 48), "wan": (96, 96)}
FRAMES = 9


def widened(tiny: Path, out: Path, family: str) -> Path:
    """The tiny backbone with a wider, deeper transformer (same input/output/text dims)."""
    from vap.training.families import get_family

    if (out / "model_index.json").exists():
        return out
    shutil.copytree(tiny, out, ignore=shutil.ignore_patterns("transformer"))
    cls = get_family(family).transformer_cls()
    config = dict(cls.load_config(tiny, subfolder="transformer"))
    config.update(num_attention_heads=3, attention_head_dim=64, num_layers=6)
    if family == "wan":
        config.update(ffn_dim=768, added_kv_proj_dim=192)
    torch.manual_seed(0)
    cls.from_config({k: v for k, v in config.items() if not k.startswith("_")}).save_pretrained(out / "transformer")
    return out


def timed(runs: dict, repeats: int) -> dict:
    """Median CPU and wall seconds of each run; runs interleaved, so a busy neighbour slows
    every variant alike."""
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    wall: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            c, t = time.process_time(), time.perf_counter()
            fn()
            cpu[name].append(time.process_time() - c)
            wall[name].append(time.perf_counter() - t)
    cpu_m = {k: statistics.median(v) for k, v in cpu.items()}
    wall_m = {k: statistics.median(v) for k, v in wall.items()}
    return {
        "cpu_seconds": {k: round(v, 4) for k, v in cpu_m.items()},
        "wall_seconds": {k: round(v, 4) for k, v in wall_m.items()},
        "ratio_to_backbone": {k: round(v / cpu_m["backbone"], 3) for k, v in cpu_m.items() if k != "backbone"},
        "wall_ratio_to_backbone": {k: round(v / wall_m["backbone"], 3) for k, v in wall_m.items()
                                   if k != "backbone"},
    }


def measure(family: str, backbone: Path, steps: int, repeats: int) -> dict:
    from vap.training.attention import ReferenceCache
    from vap.training.pipeline import VAPPipeline

    height, width = SIZES[family]
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    reference = rng.integers(0, 255, (FRAMES, height, width, 3), dtype=np.uint8)
    pipes = {mode: VAPPipeline.from_backbone(str(backbone), family, reference_attention=mode, device="cpu")
             for mode in ("joint", "one_way")}
    common = dict(num_inference_steps=1, guidance_scale=6.0, generator=None)
    generate = {
        "backbone": lambda: pipes["joint"](image, "a cat", None, "", height=height, width=width,
                                           num_frames=FRAMES, **common),
        "joint": lambda: pipes["joint"](image, "a cat", reference, "a statue", **common),
        "one_way": lambda: pipes["one_way"](image, "a cat", reference, "a statue", cache_reference=False,
                                            **common),
        "one_way_cache": lambda: pipes["one_way"](image, "a cat", reference, "a statue", cache_reference=True,
                                                  **common),
    }
    for fn in generate.values():  # warm-up: first calls pay allocation and lazy imports
        fn()
    common["num_inference_steps"] = steps

    # one denoising step alone (the transformer, CFG batch of 2), without encoders and VAE
    inputs = pipes["joint"]._inputs(image, [reference], FRAMES, ["", "a cat"], [[""], ["a statue"]])
    axis = pipes["joint"].family.channel_axis
    x = torch.cat([torch.randn(inputs.x0.shape), inputs.condition], axis)
    t = torch.tensor([500, 500])
    target = {k: v for k, v in inputs.extra.items() if not k.startswith("reference")}
    with_ref = dict(reference_hidden_states=inputs.reference, reference_encoder_hidden_states=inputs.reference_text,
                    **inputs.extra)
    cache = ReferenceCache()
    with torch.no_grad():
        pipes["one_way"].transformer(x, t, inputs.text, **with_ref, reference_cache=cache)  # fill it

        def step(mode, **kw):
            with torch.no_grad():
                pipes[mode].transformer(x, t, inputs.text, **kw)

    denoise = {
        "backbone": lambda: step("joint", **target),
        "joint": lambda: step("joint", **with_ref),
        "one_way": lambda: step("one_way", **with_ref),
        "one_way_cache": lambda: step("one_way", **with_ref, reference_cache=cache),
    }
    model = pipes["joint"].transformer
    cfg = model.config.backbone_config
    return {
        "expert_blocks": list(model.expert.config.block_ids), "num_layers": cfg["num_layers"],
        "width": cfg["num_attention_heads"] * cfg["attention_head_dim"], "video": [FRAMES, height, width],
        "steps": steps, "repeats": repeats,
        "generate": timed(generate, repeats),
        "denoising_step": timed(denoise, 5 * repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (the pipelines' default)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (see the note on CPU time)")
    parser.add_argument("--scale", choices=["small", "tiny"], default="small")
    parser.add_argument("--families", nargs="+", default=["cogvideox", "wan"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    from vap.training.tiny import make_tiny_backbone

    results = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
               "scale": args.scale, "families": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            backbone = make_tiny_backbone(family, Path(tmp) / f"tiny-{family}")
            if args.scale == "small":
                backbone = widened(backbone, Path(tmp) / f"small-{family}", family)
            results["families"][family] = r = measure(family, backbone, args.steps, args.repeats)
            r["backbone"] = f"{args.scale} {family}"
            print(f"{family}: {len(r['expert_blocks'])}/{r['num_layers']} expert blocks, width {r['width']}, "
                  f"video {r['video']}, {args.steps} steps")
            for what in ("generate", "denoising_step"):
                m = r[what]
                print(f"  {what}: backbone-only {m['cpu_seconds']['backbone']:.3f}s CPU")
                for name, ratio in m["ratio_to_backbone"].items():
                    goal = "  (goal ≤ 1.2)" if name == "one_way_cache" else ""
                    print(f"    {name:14s} {m['cpu_seconds'][name]:8.3f}s CPU  ×{ratio:.2f} of backbone-only "
                          f"(wall ×{m['wall_ratio_to_backbone'][name]:.2f}){goal}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
