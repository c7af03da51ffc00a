"""Which frames of a clip the model sees (the authors' time window) and decoding in bounded memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from vap.datasets.encode import read_clip, sample_times
from vap.datasets.synth import encode_mp4
from vap.errors import DataError


def ramp(frames: int, fps: float, h: int = 32, w: int = 32) -> bytes:
    """Frame i is a flat grey of level 10·i: the level tells which source frame was picked."""
    return encode_mp4(np.stack([np.full((h, w, 3), 10 * i, np.uint8) for i in range(frames)]), fps)


def levels(video: np.ndarray) -> list[int]:
    return [round(float(f.mean()) / 10) for f in video]


def test_evenly_spreads_the_frames_over_a_long_clip_first_and_last_included():
    data = ramp(24, fps=4)  # 6 s: far longer than 5 frames at 4 fps
    # the authors: the clip at 4 fps has 24 frames; 5 of them evenly, linspace(0, 23, 5) rounded
    assert levels(read_clip(data, frames=5, fps=4, height=32, width=32, window="evenly")) == [0, 6, 12, 17, 23]
    assert levels(read_clip(data, frames=5, fps=4, height=32, width=32, window="head")) == [0, 1, 2, 3, 4]
    # resampled to the spec's fps first: 1.5 s at 16 fps is 6 frames at 4 fps (source frames 0, 4, …, 20),
    # of which linspace(0, 5, 3) rounded = 0, 2, 5 (numpy rounds half to even)
    data16 = ramp(24, fps=16)
    assert levels(read_clip(data16, frames=3, fps=4, height=32, width=32)) == [0, 8, 20]


def test_evenly_on_a_clip_of_exactly_the_needed_length_is_head():
    data = ramp(8, fps=8)
    assert levels(read_clip(data, frames=8, fps=8, height=32, width=32)) == list(range(8))
    with pytest.raises(DataError, match="1.00s long"):
        read_clip(data, frames=9, fps=8, height=32, width=32)


def test_sample_times_closed_form():
    np.testing.assert_allclose(sample_times(49, 16.0, duration=10.0), np.round(np.linspace(0, 159, 49)) / 16)
    np.testing.assert_allclose(sample_times(49, 16.0, duration=10.0, window="head"), np.arange(49) / 16)
    with pytest.raises(DataError, match="'tail'.*evenly"):
        sample_times(4, 8.0, 1.0, window="tail")


def test_the_spec_defaults_to_evenly_and_build_and_generate_pass_it(monkeypatch):
    import inspect

    from vap.datasets import build
    from vap.spec import DataSpec
    from vap.training.generate import generate

    assert DataSpec(shards="/tmp/s").time_window == "evenly"
    assert inspect.signature(generate).parameters["time_window"].default == "evenly"
    seen = {}

    def fake_read_clip(data, **kw):
        seen.update(kw)
        raise RuntimeError("stop")

    monkeypatch.setattr("vap.datasets.encode.read_clip", fake_read_clip)
    monkeypatch.setattr(build.storage, "read_bytes", lambda uri: b"")

    class Data:
        frames, fps, height, width, time_window = 9, 8.0, 32, 32, "head"

    clip = type("Clip", (), {"id": "c", "uri": "c.mp4", "caption": ""})()
    with pytest.raises(RuntimeError):
        build._ClipCache(None, Data()).get(clip)
    assert seen["window"] == "head"


def test_decoding_holds_one_source_frame_not_the_whole_clip_at_full_resolution():
    h, w, frames = 360, 640, 17
    rng = np.random.default_rng(0)
    data = encode_mp4(rng.integers(0, 255, (frames, h, w, 3), dtype=np.uint8), 8.0)
    tracemalloc.start()
    try:
        out = read_clip(data, frames=frames, fps=8.0, height=32, width=32)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (frames, 32, 32, 3) and out.dtype == np.uint8
    # every frame converted at full size and stacked would take frames × h × w × 3 bytes (and 4×
    # that in float32 to resize): the Python-side peak must stay under one full-resolution frame
    assert peak < h * w * 3, peak
