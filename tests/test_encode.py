"""Preprocessing (resample, resize/crop) and the families' encoders on tiny backbones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vap.datasets.encode import ClipEncoder, clip_duration, read_clip, resize_crop
from vap.datasets.synth import encode_mp4
from vap.errors import DataError


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
    np.testing.assert_allclose(cols["latent"].astype(np.float32), want, atol=2e-3)
