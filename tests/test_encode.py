"""Preprocessing (resample, resize/crop) and the families' encoders on tiny backbones."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from vap.datasets.encode import (
    ClipEncoder,
    _cover,
    clip_duration,
    encoder_dtypes,
    load_component,
    read_clip,
    resize_crop,
    sample_times,
    wants_tiling,
)
from vap.datasets.synth import encode_mp4
from vap.errors import DataError, ModelError


def ramp_clip(frames: int, fps: float, h: int = 32, w: int = 32) -> bytes:
    """Frame i is a flat grey of level 10·i: the level tells which source frame was picked."""
    video = np.stack([np.full((h, w, 3), 10 * i, np.uint8) for i in range(frames)])
    return encode_mp4(video, fps)


def levels(video: np.ndarray) -> list[int]:
    return [round(float(f.mean()) / 10) for f in video]


def test_resample_picks_the_frame_on_screen_at_each_time():
    data = ramp_clip(20, fps=10)
    assert levels(read_clip(data, frames=5, fps=5, height=32, width=32, window="head")) == [0, 2, 4, 6, 8]
    # Upsampling repeats frames instead of blending them.
    assert levels(read_clip(data, frames=6, fps=20, height=32, width=32, window="head")) == [0, 0, 1, 1, 2, 2]


def test_too_short_clip_is_an_error_naming_it():
    data = ramp_clip(8, fps=8)  # 1 s
    assert clip_duration(data) == pytest.approx(1.0)
    assert read_clip(data, frames=8, fps=8, height=32, width=32).shape == (8, 32, 32, 3)
    with pytest.raises(DataError, match=r"short\.mp4: 1\.00s long.*lower data.frames"):
        read_clip(data, frames=9, fps=8, height=32, width=32, name="short.mp4")


def test_undecodable_clip_is_an_error_naming_it():
    with pytest.raises(DataError, match=r"^bad\.mp4: cannot decode .*re-encode it"):
        read_clip(b"plain text, not a video", frames=5, fps=8, height=32, width=32, name="bad.mp4")


def test_resize_covers_then_centre_crops():
    video = np.zeros((1, 40, 80, 3), np.uint8)
    video[:, :, 30:50] = 255  # a white band in the middle fifth... of a 2:1 frame
    out = resize_crop(video, 16, 16)
    assert out.shape == (1, 16, 16, 3)
    # Scaled to 16×32 then the middle 16 columns kept: the band (columns 6..9 of 16) stays centred.
    row = out[0, 8, :, 0]
    assert row[7] == 255 and row[8] == 255 and row[0] == 0 and row[15] == 0


@pytest.fixture(scope="module")
def encoders(tiny_backbones):
    return {fam: ClipEncoder.from_pretrained(fam, path) for fam, path in tiny_backbones.items()}


@pytest.fixture(scope="module")
def clip():
    return read_clip(ramp_clip(12, fps=8), frames=9, fps=8, height=32, width=32)


def test_cogvideox_columns_follow_its_pipeline(encoders, clip):
    enc = encoders["cogvideox"]
    cols = enc.encode_clip(clip)
    assert set(cols) == {"latent", "image_latent"}
    c, f, h, w = cols["latent"].shape
    assert (c, f) == (4, 5) and cols["latent"].dtype == np.float16
    assert cols["image_latent"].shape == (c, 1, h, w)  # first frame alone
    # × scaling_factor on the posterior mean (CogVideoX's normalisation)
    x = torch.from_numpy(clip).permute(3, 0, 1, 2).float().div(127.5).sub(1)[None]
    with torch.no_grad():
        mean = enc.vae.encode(x).latent_dist.mode()[0] * enc.vae.config.scaling_factor
    # the column is float16: rounding moves a value by ≤ 2^-11 of it (≈5e-4); 1e-2 is 10× that and more
    np.testing.assert_allclose(cols["latent"], mean.numpy(), rtol=1e-2, atol=1e-2)
    # Text length is the transformer's max_text_seq_length.
    text = enc.encode_text(["a cat turns into a statue", ""])
    assert text.shape == (2, 16, 32) and text.dtype == np.float16


def test_wan_columns_follow_its_pipeline(encoders, clip):
    enc = encoders["wan"]
    cols = enc.encode_clip(clip)
    assert set(cols) == {"latent", "image_latent", "image_embed"}
    assert cols["image_latent"].shape == cols["latent"].shape  # first frame then zeros: F' = F
    assert cols["image_embed"].ndim == 2 and cols["image_embed"].shape[1] == 32
    # (x − mean) / std with the VAE's per-channel statistics
    base = enc.normalise(torch.ones(1, 4, 1, 1, 1))
    enc.vae.register_to_config(latents_mean=[1.0] * 4, latents_std=[2.0] * 4)
    try:
        assert torch.allclose(enc.normalise(torch.ones(1, 4, 1, 1, 1)), torch.zeros(1, 4, 1, 1, 1))
        assert torch.allclose(enc.normalise(torch.full((1, 4, 1, 1, 1), 5.0)), torch.full((1, 4, 1, 1, 1), 2.0))
    finally:
        enc.vae.register_to_config(latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    assert torch.allclose(base, torch.ones(1, 4, 1, 1, 1))
    # Padding tokens are zeros, as in the pipeline's _get_t5_prompt_embeds.
    text = enc.encode_text(["a cat"])[0]
    assert text.shape == (512, 32)
    assert np.abs(text[:6]).sum() > 0 and not text[8:].any()


def test_encoding_is_deterministic(encoders, clip):
    for enc in encoders.values():
        a, b = enc.encode_clip(clip), enc.encode_clip(clip)
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_frame_count_must_fit_the_vae(encoders):
    encoders["cogvideox"].check_frames(17)
    with pytest.raises(DataError, match=r"data.frames = 10: .* 4k\+1 frames; use 9 or 13"):
        encoders["cogvideox"].check_frames(10)


def test_a_vae_built_for_small_clips_encodes_them_whole():
    """The toy backbone's VAE (sample size 32 px) must not be tiled: its latents are diffusers'
    own untiled encode of the clip (posterior mode × scaling factor), 4× smaller in space."""
    from diffusers import AutoencoderKLCogVideoX

    from vap.datasets.synth import render_clip
    from vap.training.families.cogvideox.toy import shipped_path

    video, _ = render_clip("pan_left", 3, 0, frames=9, size=32)
    cols = ClipEncoder.from_pretrained("cogvideox", shipped_path(), device="cpu").encode_clip(video)
    vae = AutoencoderKLCogVideoX.from_pretrained(shipped_path(), subfolder="vae").eval()
    x = torch.from_numpy(video).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]
    with torch.no_grad():
        want = (vae.encode(x).latent_dist.mode() * vae.config.scaling_factor)[0].numpy()
    assert cols["latent"].shape == want.shape == (vae.config.latent_channels, 3, 8, 8)
    # shards store float16: its rounding error is at most 2^-9 ≈ 0.00195 for |latent| < 8
    np.testing.assert_allclose(cols["latent"].astype(np.float32), want, atol=2e-3)


# --- exact behaviour (each expectation worked out by hand) -------------------------------------

def av_clip(fmt: str = "mp4", frames: int = 12, fps: int = 8, first_pts: int = 0, sound: bool = False) -> bytes:
    """`ramp_clip`'s levels in other containers: Matroska and MPEG-TS keep no frame count, `first_pts`
    starts the video late, `sound` adds an AAC track (longer than the video) before the video's."""
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        audio = c.add_stream("aac", rate=8000) if sound else None
        video = c.add_stream("libx264", rate=fps)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 10 * i, np.uint8), format="rgb24")
            frame.pts = first_pts + i
            c.mux(video.encode(frame))
        c.mux(video.encode())
        if audio is not None:
            tone = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
            tone.sample_rate, tone.pts = 8000, 0
            c.mux(audio.encode(tone))
            c.mux(audio.encode())
    return buf.getvalue()


def test_sample_times_by_window():
    # evenly (the default): 2 s at 8 fps is 16 frames on screen; 5 of them spread over 0..15 and
    # rounded half to even: 0, 3.75, 7.5, 11.25, 15 → 0, 4, 8, 11, 15
    np.testing.assert_array_equal(sample_times(5, 8, 2.0), np.array([0, 4, 8, 11, 15]) / 8)
    np.testing.assert_array_equal(sample_times(4, 8, 10.0, "head"), np.arange(4) / 8)  # head ignores the duration
    np.testing.assert_array_equal(sample_times(4, 8, None, "evenly"), np.arange(4) / 8)
    with pytest.raises(DataError) as err:
        sample_times(4, 8, 1.0, "middle")
    assert str(err.value) == "time window 'middle' is not known; use one of ['evenly', 'head']"


@pytest.mark.parametrize("fmt", ["matroska", "mpegts"])
def test_duration_without_a_frame_count_comes_from_the_container(fmt):
    assert clip_duration(av_clip(fmt)) == pytest.approx(12 / 8)


def test_duration_is_the_videos_not_a_longer_sound_tracks():
    assert clip_duration(av_clip(sound=True)) == pytest.approx(12 / 8)  # the audio lasts 2 s


def test_a_clip_with_a_sound_track_reads_as_its_video():
    data = av_clip(sound=True)  # its audio frames (every 0.128 s) fall between the video's
    assert levels(read_clip(data, frames=5, fps=8, height=16, width=16, window="head")) == [0, 1, 2, 3, 4]
    # at 10 fps (times 0, 0.1, … 0.4) the frames on screen at 8 fps are 0, 0, 1, 2, 3
    assert levels(read_clip(data, frames=5, fps=10, height=16, width=16, window="head")) == [0, 0, 1, 2, 3]


def test_a_clip_that_starts_late_is_read_from_its_first_frame():
    data = av_clip(first_pts=16)  # the first frame is shown at 2 s
    assert levels(read_clip(data, frames=5, fps=8, height=16, width=16, window="head")) == [0, 1, 2, 3, 4]
    assert levels(read_clip(data, frames=4, fps=8, height=16, width=16)) == [0, 4, 7, 11]  # 0..11 evenly


def test_read_clip_passes_its_window_and_gives_uint8():
    data = ramp_clip(24, fps=8)  # 3 s
    head = read_clip(data, frames=3, fps=8, height=16, width=16, window="head")
    assert head.dtype == np.uint8 and levels(head) == [0, 1, 2]
    assert levels(read_clip(data, frames=3, fps=8, height=16, width=16)) == [0, 12, 23]


def test_a_download_cut_before_its_first_frame_is_zero_seconds_long(tmp_path):
    import av

    path = tmp_path / "cut.mp4"  # the index first (faststart), as streaming servers serve it
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as c:
        video = c.add_stream("libx264", rate=8)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        for i in range(12):
            c.mux(video.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 10 * i, np.uint8), format="rgb24")))
        c.mux(video.encode())
    data = path.read_bytes()
    with pytest.raises(DataError) as err:
        read_clip(data[:data.find(b"mdat") + 4], frames=5, fps=8, height=16, width=16)
    assert str(err.value) == ("clip: 0.00s long, 5 frames at 8 fps need more than 0.50s; "
                              "use longer clips or lower data.frames / raise data.fps")


def test_an_unknown_window_is_refused_by_read_clip_too():
    with pytest.raises(DataError, match="time window 'middle' is not known"):
        read_clip(ramp_clip(8, fps=8), frames=2, fps=8, height=16, width=16, window="middle")


def test_a_short_clip_is_exactly_this_line():
    with pytest.raises(DataError) as err:
        read_clip(ramp_clip(8, fps=8), frames=17, fps=8, height=16, width=16)
    assert str(err.value) == ("clip: 1.00s long, 17 frames at 8 fps need more than 2.00s; "
                              "use longer clips or lower data.frames / raise data.fps")
    with pytest.raises(DataError, match=r"^clip: cannot decode \("):
        read_clip(b"not a video", frames=2, fps=8, height=16, width=16)


@pytest.mark.parametrize(("h", "w", "want"), [
    (100, 50, ((64, 32), 16, 0)),   # scale 0.64 (width decides): 64×32, rows 16..47 kept
    (50, 100, ((32, 64), 0, 16)),
    (96, 32, ((96, 32), 32, 0)),    # already as wide: only cropped
    (10, 10, ((32, 32), 0, 0)),     # upscaled ×3.2
])
def test_cover_closed_form(h, w, want):
    assert _cover(h, w, 32, 32) == want


def test_resize_crop_crops_the_centre_of_a_frame_already_covering():
    video = np.random.default_rng(0).integers(0, 256, (2, 4, 8, 3), dtype=np.uint8)
    out = resize_crop(video, 4, 4)  # 4×8 covers 4×4 as it is: columns 2..5
    assert out.dtype == np.uint8 and np.array_equal(out, video[:, :, 2:6])


def test_resize_crop_is_antialiased_bilinear_with_half_pixel_centres():
    # halving a step 0,0,0,0,255,255,255,255: an antialiased output pixel at source x = 2.5 weighs
    # source pixels 1..4 by the triangle 1 - |d|/2 (0.25, 0.75, 0.75, 0.25), normalised by their sum
    # 2: 255·0.25/2 = 31.9 → 32; plain bilinear would give 0, 0, 255, 255
    row = np.array([0, 0, 0, 0, 255, 255, 255, 255], np.uint8)
    video = np.repeat(np.repeat(row[None, None, :, None], 2, 1), 3, 3)  # [1, 2, 8, 3]
    assert resize_crop(video, 1, 4)[0, 0, :, 0].tolist() == [0, 32, 223, 255]
    # doubling 0, 100: half-pixel centres sample 0, 0.25, 0.75, 1 → 0, 25, 75, 100 (corners aligned: 33, 67)
    video = np.repeat(np.array([0, 100], np.uint8)[None, None, :, None], 3, 3)  # [1, 1, 2, 3]
    assert resize_crop(video, 2, 4)[0, 0, :, 0].tolist() == [0, 25, 75, 100]


def test_frames_are_area_averaged_to_the_output_size():
    # 64×64: 2-pixel stripes of 0 / 200, across in the top half, down in the bottom half; read at
    # 16×16 each output pixel averages a 4×4 block, two stripes of each, = 100 (left unscaled in
    # either direction, one half's stripes would alternate)
    i, j = np.indices((64, 64))
    board = (np.where(i < 32, i // 2, j // 2) % 2 * 200).astype(np.uint8)
    video = np.repeat(board[None, :, :, None], 3, 3).repeat(4, 0)
    out = read_clip(encode_mp4(video, 8), frames=2, fps=8, height=16, width=16, window="head")
    assert out.shape == (2, 16, 16, 3) and abs(float(out.mean()) - 100) < 6 and out.std() < 8


def test_load_component_loads_in_the_dtype_asked(tiny_backbones):
    path = str(tiny_backbones["cogvideox"])
    for name in ("vae", "text_encoder"):  # a diffusers and a transformers class
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # the library's current keyword, not a deprecated one
            part = load_component(path, name, torch.float16)
        dtypes = [p.dtype for p in part.parameters()]  # (T5 keeps its feed-forward `wo` in float32)
        assert dtypes.count(torch.float16) > len(dtypes) / 2


def test_encoders_load_in_bfloat16_on_a_gpu_but_the_vae_in_float32():
    parts = ("vae", "text_encoder", "image_encoder")
    f32, bf16 = torch.float32, torch.bfloat16
    assert encoder_dtypes(parts, "cpu") == dict.fromkeys(parts, f32)
    for gpu in ("cuda", "cuda:1"):
        assert encoder_dtypes(parts, gpu) == {"vae": f32, "text_encoder": bf16, "image_encoder": bf16}


def test_loaded_encoders_are_frozen(tiny_backbones):
    for family, path in tiny_backbones.items():
        enc = ClipEncoder.from_pretrained(family, path)
        for part in (enc.vae, enc.text_encoder, enc.image_encoder):
            if part is not None:
                assert not part.training and not any(p.requires_grad for p in part.parameters())


def test_an_unloadable_backbone_is_one_line(tmp_path):
    with pytest.raises(ModelError) as err:
        ClipEncoder.from_pretrained("cogvideox", tmp_path)
    assert str(err.value).startswith(f"{tmp_path}: cannot load the cogvideox encoders (")
    assert str(err.value).endswith("); point model.backbone at a diffusers cogvideox I2V repo")


@pytest.mark.parametrize(("height", "width", "tiled"), [(256, 256, True), (128, 128, True), (127, 256, False),
                                                        (256, 127, False), (16, 16, False), (None, None, True)])
def test_only_vaes_for_large_clips_are_tiled(height, width, tiled):
    from types import SimpleNamespace

    sizes = {} if height is None else {"tile_sample_min_height": height, "tile_sample_min_width": width}
    assert wants_tiling(SimpleNamespace(**sizes)) is tiled


def test_the_frame_count_advice_is_the_two_nearest_counts(encoders):
    with pytest.raises(DataError) as err:
        encoders["cogvideox"].check_frames(12)
    assert str(err.value) == "data.frames = 12: the cogvideox VAE needs 4k+1 frames; use 9 or 13"
