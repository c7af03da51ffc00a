"""D1: peak memory of decoding clips ÷ the bytes of what decoding produces.

Two high-resolution clips (4K in full, 1080p with --quick) are read the way a build reads them
(`vap.datasets.encode.read_clip`: the authors' 49 frames at 16 fps evenly over the clip, scaled
to 480×720), each reading in a fresh process so its peak resident memory (ru_maxrss) is its own.
Side by side, the same clips through the former whole-clip path — every picked frame converted
at full resolution, stacked, then resized at once in float32 — which is what the ratio is
measured against. Writes benchmarks/results/decode.json:

  ratio          peak memory above the process's baseline ÷ output bytes, frame-by-frame decoding
  ratio_whole    the same for the whole-clip path

The whole-clip baseline at 4K holds ≈ 9 GB (that is the point); --quick (1080p) ≈ 3 GB.
Measured with --quick on 2 CPUs: 1.20× the output (122 MB for 102 MB of frames) against 28.4×
(2.9 GB) for the whole-clip path, 3.6× faster too.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def make_clip(path: Path, frames: int, height: int, width: int, fps: float, seed: int) -> None:
    """Smooth moving gradients plus noise (compresses like footage, not like flat colour)."""
    import av

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "28"}
        for i in range(frames):
            base = (x / width * 200 + y / height * 50 + 3 * i) % 256
            img = np.stack([base, (base + 85) % 256, (base + 170) % 256], -1)
            img = (img + rng.normal(0, 8, img.shape[:2])[..., None]).clip(0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def whole_clip(data: bytes, frames: int, fps: float, height: int, width: int) -> np.ndarray:
    """The former path: picked frames converted at full resolution, stacked, resized at once."""
    import io

    import av

    from vap.datasets.encode import clip_duration, resize_crop, sample_times

    wanted = sample_times(frames, fps, clip_duration(data))
    picked, prev = [], None
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        start = None
        for frame in container.decode(stream):
            t = float(frame.time)
            start = t if start is None else start
            t -= start
            while prev is not None and len(picked) < frames and wanted[len(picked)] < t - 1e-6:
                picked.append(prev)
            prev = frame.to_ndarray(format="rgb24")
        while len(picked) < frames:
            picked.append(prev)
    return resize_crop(np.stack(picked), height, width)


def child(method: str, clips: list[str], frames: int, fps: float, height: int, width: int) -> None:
    from vap.datasets.encode import read_clip

    blobs = [Path(c).read_bytes() for c in clips]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    outs = []
    for data in blobs:  # both clips held, as a build holding a pair would
        if method == "frame":
            outs.append(read_clip(data, frames=frames, fps=fps, height=height, width=width))
        else:
            outs.append(whole_clip(data, frames, fps, height, width))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    digest = [float(o.astype(np.float32).mean()) for o in outs]
    print(json.dumps({"peak_above_baseline": peak - base, "output_bytes": sum(o.nbytes for o in outs),
                      "seconds": seconds, "means": digest}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1080p sources instead of 4K")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    frames, fps, height, width = 49, 16.0, 480, 720
    if args.child:
        child(args.child[0], args.child[1:], frames, fps, height, width)
        return
    src_h, src_w = (1080, 1920) if args.quick else (2160, 3840)
    src_frames = 80  # 5 s at 16 fps: evenly picks 49 of 80
    with tempfile.TemporaryDirectory(prefix="vap-bench-decode-") as tmp:
        clips = [Path(tmp) / f"clip{i}.mp4" for i in range(2)]
        for i, c in enumerate(clips):
            make_clip(c, src_frames, src_h, src_w, fps, seed=i)
        runs = {}
        for method in ("frame", "whole"):
            out = subprocess.run([sys.executable, __file__, "--child", method, *map(str, clips)],
                                 capture_output=True, text=True, check=True)
            runs[method] = json.loads(out.stdout.strip().splitlines()[-1])
    frame, whole = runs["frame"], runs["whole"]
    result = {
        "source": f"2 clips, {src_frames} frames {src_w}x{src_h} at {fps:g} fps",
        "output": f"{frames} frames {width}x{height} each (evenly), uint8",
        "output_bytes": frame["output_bytes"],
        "frame_by_frame": frame, "whole_clip": whole,
        "ratio": round(frame["peak_above_baseline"] / frame["output_bytes"], 3),
        "ratio_whole": round(whole["peak_above_baseline"] / whole["output_bytes"], 3),
        "memory_saved": round(whole["peak_above_baseline"] / max(frame["peak_above_baseline"], 1), 2),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "decode.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
