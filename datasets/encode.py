"""Preprocess clips and encode them the way the family's image-to-video pipeline does.

`read_clip` decodes an mp4 (PyAV), resamples it to the spec's frame rate and frame count over
the spec's time window and resizes / centre-crops it to the spec's resolution, frame by frame. `ClipEncoder` turns the result into the
shard columns of docs/CONTRACTS.md, mirroring diffusers' `CogVideoXImageToVideoPipeline` and
`WanImageToVideoPipeline` (`prepare_latents`, `encode_prompt`, `encode_image`). Everything a
family does differently lives in its small subclass, in the family's folder
(`vap.training.families.<name>.encoder`), found through `get_family(name).encoder`.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from vap.errors import DataError, ModelError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- preprocessing

TIME_WINDOWS = ("evenly", "head")


def sample_times(frames: int, fps: float, duration: float | None = None, window: str = "evenly") -> np.ndarray:
    """Times (s, from the first frame) of the `frames` output frames.

    `head`: the first `frames` frames at `fps`. `evenly` (the authors', in training and at
    inference): the clip resampled to `fps`, then `frames` of those frames taken evenly over its
    whole `duration`, first and last included; a clip without more frames than that is `head`.
    """
    if window not in TIME_WINDOWS:
        raise DataError(f"time window {window!r} is not known; use one of {list(TIME_WINDOWS)}")
    if window == "head" or duration is None:
        return np.arange(frames) / fps
    available = max(frames, int(np.ceil(duration * fps - 1e-6)))  # frames on screen at fps
    return np.round(np.linspace(0, available - 1, frames)) / fps


def clip_duration(data: bytes) -> float:
    """Seconds an mp4 shows (frames × frame duration), from its header — nothing is decoded."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if stream.frames and rate:
            return stream.frames / float(rate)
        return float(container.duration or 0) / av.time_base


def read_clip(data: bytes, *, frames: int, fps: float, height: int, width: int, window: str = "evenly",
              name: str = "clip") -> np.ndarray:
    """Decode `data` (an mp4's bytes) into `frames` RGB frames at `fps`, `height`×`width`.

    Each output frame is the source frame shown at that time (the latest one starting at or
    before it), so resampling never blends frames; `window` picks the times (`sample_times`).
    Frames are scaled and cropped one at a time as they are decoded, straight from the decoder's
    format to uint8 RGB at the output size, so memory is the output plus one frame, whatever the
    source resolution. Raises DataError when the clip is shorter than (frames − 1) / fps
    seconds. Returns uint8 [F, H, W, 3].
    """
    out = np.empty((frames, height, width, 3), np.uint8)
    n = 0
    try:
        wanted = sample_times(frames, fps, clip_duration(data), window)  # the header only: nothing decoded
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            frame_dur = 1.0 / float(stream.average_rate or stream.guessed_rate or fps)
            start = prev_time = None
            prev = None  # (frame, its output array once converted): only picked frames are converted
            for frame in container.decode(stream):
                t = float(frame.time if frame.time is not None else 0.0)
                start = t if start is None else start
                t -= start
                while n < frames and wanted[n] < t - 1e-6:  # never before the first frame: wanted ≥ 0 = its t
                    out[n], n = _scaled(prev, height, width), n + 1
                if n == frames:
                    break
                prev, prev_time = [frame, None], t
            # The last source frame stays on screen for one frame duration.
            while prev is not None and n < frames and wanted[n] < prev_time + frame_dur - 1e-6:
                out[n], n = _scaled(prev, height, width), n + 1
    except (av.FFmpegError, IndexError) as err:
        raise DataError(f"{name}: cannot decode ({err}); re-encode it as mp4 (H.264)") from None
    if n < frames:
        have = 0.0 if prev_time is None else prev_time + frame_dur
        raise DataError(
            f"{name}: {have:.2f}s long, {frames} frames at {fps:g} fps need more than {(frames - 1) / fps:.2f}s; "
            "use longer clips or lower data.frames / raise data.fps"
        )
    return out


def _cover(h: int, w: int, height: int, width: int) -> tuple[tuple[int, int], int, int]:
    """The size that covers height×width with the aspect kept, and the centre crop's top, left."""
    scale = max(height / h, width / w)
    size = (max(height, round(h * scale)), max(width, round(w * scale)))
    return size, (size[0] - height) // 2, (size[1] - width) // 2


def _scaled(entry: list, height: int, width: int) -> np.ndarray:
    """A decoded frame scaled to cover height×width (swscale, area-averaged) and centre-cropped."""
    if entry[1] is None:
        frame = entry[0]
        (h, w), top, left = _cover(frame.height, frame.width, height, width)
        rgb = frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="AREA")
        entry[1] = rgb[top:top + height, left:left + width]
    return entry[1]


def resize_crop(video: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale uint8 [F, H, W, 3] to cover height×width (aspect kept), then centre-crop."""
    f, h, w, _ = video.shape
    if (h, w) == (height, width):
        return video
    size, top, left = _cover(h, w, height, width)
    x = torch.from_numpy(video).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    x = x[:, :, top:top + height, left:left + width]
    # (antialiased) bilinear weights are non-negative and sum to 1: no value leaves [0, 255]
    return x.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def to_model_input(video: np.ndarray) -> torch.Tensor:
    """uint8 [F, H, W, 3] → float [C, F, H, W] in [-1, 1] (diffusers' VideoProcessor range)."""
    return torch.from_numpy(video).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


# ---------------------------------------------------------------- encoding

def load_component(path: str, name: str, dtype: torch.dtype):
    """`from_pretrained(path, subfolder=name)` with the class model_index.json names for it."""
    import importlib
    import json

    library, class_name = json.loads((Path(path) / "model_index.json").read_text())[name]
    cls = getattr(importlib.import_module(library), class_name)
    if issubclass(cls, torch.nn.Module):
        key = "dtype" if library == "transformers" else "torch_dtype"  # each library's current name
        return cls.from_pretrained(path, subfolder=name, **{key: dtype})
    return cls.from_pretrained(path, subfolder=name)


def encoder_dtypes(components: tuple[str, ...], device: str) -> dict[str, torch.dtype]:
    """bfloat16 on a GPU, float32 on the CPU; the VAEs stay in float32, as both pipelines'
    examples load them."""
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return {name: torch.float32 if name == "vae" else dtype for name in components}


def wants_tiling(vae) -> bool:
    """49 frames at 480×720 do not fit through the VAE at once; tiles only apply above ~256 px,
    as in the families' fine-tuning scripts. diffusers sizes CogVideoX's tiles from the config's
    sample size: a VAE built for small clips (the toy's 32 px → 16 px tiles, 4 latent pixels)
    would be tiled with overlaps that round to wrong latent sizes, so it runs untiled (a VAE
    that has no tile sizes counts as 256 px)."""
    return min(getattr(vae, "tile_sample_min_height", 256), getattr(vae, "tile_sample_min_width", 256)) >= 128


class ClipEncoder:
    """The family's VAE, text encoder and tokenizer (and Wan's CLIP image encoder), frozen.

    `encode_clip` returns the per-clip columns (latent, image_latent, image_embed for Wan) and
    `encode_text` the caption embeddings, as float16 numpy arrays.
    """

    family = ""
    components = ("vae", "text_encoder", "tokenizer")
    default_text_len = 226

    def __init__(self, vae, text_encoder, tokenizer, *, text_len: int, image_encoder=None,
                 image_processor=None, device: str):
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        self.image_encoder, self.image_processor = image_encoder, image_processor
        self.text_len, self.device = text_len, torch.device(device)

    @classmethod
    def from_pretrained(cls, family: str, path: str | Path, *, text_len: int | None = None,
                        device: str | None = None) -> ClipEncoder:
        """Load the encoders of a diffusers I2V repo folder (`path`) of `family`."""
        from vap.training.families import get_family

        sub = get_family(family).encoder
        path = str(path)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            parts = {name: load_component(path, name, dtype)
                     for name, dtype in encoder_dtypes(sub.components, device).items()}
            text_len = text_len or sub.family_text_len(path)
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(f"{path}: cannot load the {family} encoders ({err}); "
                             f"point model.backbone at a diffusers {family} I2V repo") from None
        for m in parts.values():
            if isinstance(m, torch.nn.Module):
                m.to(device).eval().requires_grad_(False)
        if wants_tiling(parts["vae"]):
            parts["vae"].enable_tiling()
        return sub(text_len=text_len, device=device, **parts)

    @classmethod
    def family_text_len(cls, path: str) -> int:
        return cls.default_text_len

    # -- what every family shares

    @property
    def temporal_ratio(self) -> int:
        return int(self.vae.config.get("temporal_compression_ratio") or self.vae.config.get("scale_factor_temporal") or 4)

    def check_frames(self, frames: int) -> None:
        """The causal video VAEs keep the first frame and compress the rest by their ratio."""
        r = self.temporal_ratio
        if (frames - 1) % r:
            raise DataError(f"data.frames = {frames}: the {self.family} VAE needs {r}k+1 frames; "
                            f"use {(frames - 1) // r * r + 1} or {((frames - 1) // r + 1) * r + 1}")

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> np.ndarray:
        """Last hidden state of the text encoder, [B, L, D] float16 (pipeline `encode_prompt`)."""
        captions = [self.clean(c) for c in captions]
        tok = self.tokenizer(captions, padding="max_length", max_length=self.text_len, truncation=True,
                             add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        out = self.text_embed(tok.input_ids.to(self.device), tok.attention_mask.to(self.device))
        return out.float().cpu().numpy().astype(np.float16)

    @torch.no_grad()
    def encode_clip(self, video: np.ndarray) -> dict[str, np.ndarray]:
        """Columns of one preprocessed clip (uint8 [F, H, W, 3]): latent, image_latent (+ image_embed)."""
        x = to_model_input(video).unsqueeze(0).to(self.device, self.vae.dtype)  # [1, C, F, H, W]
        cols = {"latent": self.normalise(self._vae_mean(x)), "image_latent": self.image_latent(x)}
        embed = self.image_embed(video[0])
        if embed is not None:
            cols["image_embed"] = embed
        return {k: v[0].float().cpu().numpy().astype(np.float16) for k, v in cols.items()}

    def _vae_mean(self, x: torch.Tensor) -> torch.Tensor:
        # The posterior mean, not a sample: the same clip always gives the same latent
        # (Wan's pipeline does the same with sample_mode="argmax").
        return self.vae.encode(x).latent_dist.mode()

    # -- what differs per family (overridden below)

    @staticmethod
    def clean(caption: str) -> str:
        return caption

    def text_embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def normalise(self, latent: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def image_latent(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def image_embed(self, first_frame: np.ndarray) -> torch.Tensor | None:
        return None
