"""The evaluation metrics on real synthetic clips (rendered, H.264-encoded, decoded) with known answers."""

import numpy as np
import pytest

from vap.datasets.encode import read_clip
from vap.datasets.synth import encode_mp4, render_clip
from vap.evaluation import metrics


def clip(condition: str, index: int = 0, frames: int = 17, size: int = 32) -> np.ndarray:
    video, _ = render_clip(condition, 11, index, frames=frames, size=size)
    return read_clip(encode_mp4(video, 8.0), frames=frames, fps=8.0, height=size, width=size, window="head")


def test_a_clip_moving_right_has_positive_mean_flow_and_one_moving_left_negative():
    right = metrics.mean_flow(clip("slide_right"))
    # The object moves 0.6 of 32 px over 16 frame pairs: ≈ 1.2 px per pair to the right. Flow is
    # measured over the whole frame (background included), so only the sign and the axis are certain.
    assert (right[:, 0] > 0).all() and abs(right[:, 1]).mean() < right[:, 0].mean() / 4
    # The camera panning right moves the world to the left in the frame.
    assert metrics.mean_flow(clip("pan_right"))[:, 0].mean() < 0
    assert metrics.mean_flow(clip("slide_right")[::-1])[:, 0].mean() < 0


def test_a_static_clip_has_dynamic_degree_0_and_a_moving_one_1():
    still = np.repeat(clip("grow")[:1], 17, axis=0)
    assert metrics.dynamic_degree(still) == 0.0
    assert metrics.dynamic_degree(clip("slide_right")) == 1.0
    assert metrics.temporal_flicker(still) == 1.0


def test_a_clip_and_its_frame_shuffled_copy_differ_in_smoothness():
    video = clip("pan_left")
    shuffled = video[np.random.default_rng(0).permutation(len(video))]
    smooth, rough = metrics.motion_smoothness(video), metrics.motion_smoothness(shuffled)
    # measured: 0.986 in order, 0.914 shuffled; VBench-style smoothness is 1 for a perfectly
    # interpolable clip, and shuffling breaks interpolation by far more than the 0.05 asked
    assert smooth > 0.98 and rough < smooth - 0.05
    # Flow-guided re-creation beats a plain blend of neighbours on a moving clip: the flow is used.
    blend = 1 - np.abs(0.5 * (video[:-2].astype(float) + video[2:]) - video[1:-1]).mean() / 255
    assert smooth > blend


def test_temporal_flicker_is_one_minus_the_mean_frame_difference():
    rng = np.random.default_rng(0)
    flat = np.full((5, 16, 16, 3), 100, np.uint8)
    flat[1::2] += 20  # every other frame brighter by 20: |diff| = 20 everywhere
    assert metrics.temporal_flicker(flat) == pytest.approx(1 - 20 / 255)
    noisy = rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    assert metrics.temporal_flicker(noisy) == pytest.approx(1 - np.abs(np.diff(noisy.astype(float), axis=0)).mean() / 255)


def test_copying_is_high_for_the_reference_itself_and_negative_for_the_truth():
    reference, truth = clip("grow", 0), clip("grow", 1)
    copied = metrics.copying(reference, reference, truth)
    assert copied["to_reference"] == 1.0 and copied["copying"] > 0
    honest = metrics.copying(truth, reference, truth)
    assert honest["to_truth"] == 1.0 and honest["copying"] < 0
    # Resampled to the output's frames and size before comparing.
    assert metrics.similarity(truth[::2], truth) == 1.0


def test_the_bootstrap_interval_of_a_known_sample():
    # 100 fair coin flips: mean 0.5, standard error 0.05, so the 95 % interval is 0.5 ± 1.96 · 0.05,
    # on the sample's grid of hundredths: [0.40, 0.60] (a 97.5 % one would reach 0.39 / 0.61).
    mean, low, high = metrics.bootstrap_ci([0, 1] * 50, samples=4000)
    assert mean == 0.5 and low == pytest.approx(0.40, abs=0.006) and high == pytest.approx(0.60, abs=0.006)
    assert metrics.bootstrap_ci([0.3] * 7) == (0.3, 0.3, 0.3)
    assert metrics.bootstrap_ci([0, 1, 1, 0, 1], seed=3) == metrics.bootstrap_ci([0, 1, 1, 0, 1], seed=3)
    with pytest.raises(ValueError):
        metrics.bootstrap_ci([])
