"""Video metrics of `vap eval`: CPU proxies of VBench's motion metrics, copying, bootstrap CIs.

Clips are uint8 numpy [F, H, W, 3]. The motion metrics follow VBench's definitions with its
learned parts replaced by OpenCV's Farnebäck optical flow (no model weights), so they are
*proxies*: comparable between runs of this platform, not to published VBench numbers.

- `mean_flow`: per frame pair, the mean (dx, dy) flow in pixels (x right, y down).
- `dynamic_degree`: VBench's rule on flow magnitudes — a clip is dynamic (1) when at least
  round(4·F/16) frame pairs have a top-5 % flow magnitude above 6·min(H, W)/256 pixels, else 0.
- `motion_smoothness`: VBench drops every odd frame and re-creates it by frame interpolation;
  here each inner frame is re-created from its two neighbours warped half way along their optical
  flow, and the score is 1 − mean |re-created − real| / 255 (1 = perfectly smooth).
- `temporal_flicker`: VBench's 1 − mean |frame t − frame t−1| / 255 over consecutive frames
  (meant for static scenes: motion lowers it too).
- `similarity` / `copying`: 1 − mean absolute pixel error / 255 between two clips resampled to
  the same frames and size; copying = similarity to the reference − similarity to the truth.
- `bootstrap_ci`: a seeded percentile bootstrap of the mean.
"""

from __future__ import annotations

import cv2
import numpy as np

# Farnebäck on clips of a few dozen pixels: a small window and pyramid suit that scale.
_FLOW = dict(pyr_scale=0.5, levels=2, winsize=7, iterations=3, poly_n=5, poly_sigma=1.1, flags=0)


def _gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


def flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense optical flow [H, W, 2] (dx, dy) from RGB frame a to RGB frame b."""
    return cv2.calcOpticalFlowFarneback(_gray(a), _gray(b), None, **_FLOW)


def _check(clip: np.ndarray, min_frames: int = 2) -> np.ndarray:
    clip = np.asarray(clip)
    if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != np.uint8 or len(clip) < min_frames:
        raise ValueError(f"a clip must be uint8 [F>={min_frames}, H, W, 3], got {clip.dtype} {clip.shape}")
    return clip


def mean_flow(clip: np.ndarray) -> np.ndarray:
    """[F−1, 2]: each consecutive pair's mean flow (dx, dy) in pixels."""
    clip = _check(clip)
    return np.stack([flow(a, b).reshape(-1, 2).mean(0) for a, b in zip(clip[:-1], clip[1:], strict=True)])


def dynamic_degree(clip: np.ndarray) -> float:
    """1.0 when the clip moves by VBench's rule (see the module doc), else 0.0."""
    clip = _check(clip)
    h, w = clip.shape[1:3]
    threshold, needed = 6.0 * min(h, w) / 256.0, max(1, round(4 * len(clip) / 16))
    moving = 0
    for a, b in zip(clip[:-1], clip[1:], strict=True):
        mag = np.linalg.norm(flow(a, b), axis=-1).ravel()
        top = np.sort(mag)[-max(1, int(0.05 * mag.size)):]
        moving += float(top.mean()) > threshold
    return float(moving >= needed)


def _warp(frame: np.ndarray, f: np.ndarray, scale: float) -> np.ndarray:
    """frame sampled at x + scale·f(x) (backward warping)."""
    h, w = f.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(frame, gx + scale * f[..., 0], gy + scale * f[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def motion_smoothness(clip: np.ndarray) -> float:
    """1 − mean error of each inner frame re-created from its neighbours along their flow."""
    clip = _check(clip, 3)
    errors = []
    for prev, cur, nxt in zip(clip[:-2], clip[1:-1], clip[2:], strict=True):
        # The middle frame at x is where prev was at x − f/2 and next at x + f/2 (f: prev → next,
        # taken at the middle frame's pixel; flow at x is a fair estimate of it for small motion).
        f_next = flow(prev, nxt)
        mid = 0.5 * (_warp(prev, f_next, -0.5).astype(np.float32) + _warp(nxt, f_next, 0.5).astype(np.float32))
        errors.append(np.abs(mid - cur.astype(np.float32)).mean())
    return float(1.0 - np.mean(errors) / 255.0)


def temporal_flicker(clip: np.ndarray) -> float:
    """1 − mean absolute difference of consecutive frames / 255 (VBench's definition)."""
    clip = _check(clip).astype(np.float32)
    return float(1.0 - np.abs(np.diff(clip, axis=0)).mean() / 255.0)


def _match(clip: np.ndarray, frames: int, size: tuple[int, int]) -> np.ndarray:
    idx = np.round(np.linspace(0, len(clip) - 1, frames)).astype(int)
    return np.stack([cv2.resize(np.ascontiguousarray(f), (size[1], size[0]), interpolation=cv2.INTER_AREA)
                     for f in clip[idx]]).astype(np.float32)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """1 − mean |a − b| / 255 after resampling b to a's frame count and size."""
    a, b = _check(a, 1), _check(b, 1)
    return float(1.0 - np.abs(a.astype(np.float32) - _match(b, len(a), a.shape[1:3])).mean() / 255.0)


def copying(output: np.ndarray, reference: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """How much the output looks like the reference's pixels rather than its own continuation:
    {"to_reference", "to_truth", "copying" = to_reference − to_truth} (> 0: closer to the reference)."""
    to_ref, to_truth = similarity(output, reference), similarity(output, truth)
    return {"to_reference": to_ref, "to_truth": to_truth, "copying": to_ref - to_truth}


def bootstrap_ci(values, *, samples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the sample mean and its seeded percentile-bootstrap interval."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(samples, values.size))].mean(axis=1)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(values.mean()), float(low), float(high)
