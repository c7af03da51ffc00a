"""Shared inputs for the model tests (no tests here): shard-format batches and forward kwargs."""

from __future__ import annotations

import torch

from vap.training.tiny import TEXT_DIM, TEXT_LEN, WAN_TEXT_LEN

FAMILIES = ("cogvideox", "wan")
LATENT = dict(channels=4, frames=3, height=8, width=8)  # tiny VAEs: 4 latent channels
CLIP_TOKENS = 17  # tiny CLIP: (32 / 8)² patches + class token


def shard_batch(family: str, batch: int = 2, seed: int = 0, ref_frames: int | None = None) -> dict:
    """A batch as the loader yields it (docs/CONTRACTS.md "Shard samples"), float16."""
    g = torch.Generator().manual_seed(seed)
    c, f, h, w = LATENT["channels"], LATENT["frames"], LATENT["height"], LATENT["width"]
    fr = ref_frames or f
    length = TEXT_LEN if family == "cogvideox" else WAN_TEXT_LEN

    def r(*shape):
        return torch.randn(*shape, generator=g).half()

    out = {
        "target_latent": r(batch, c, f, h, w),
        "reference_latent": r(batch, c, fr, h, w),
        "target_text": r(batch, length, TEXT_DIM),
        "reference_text": r(batch, length, TEXT_DIM),
    }
    if family == "cogvideox":
        out["target_image_latent"] = r(batch, c, 1, h, w)
        out["reference_image_latent"] = r(batch, c, 1, h, w)
    else:
        out["target_image_latent"] = torch.cat([r(batch, c, 1, h, w), torch.zeros(batch, c, f - 1, h, w).half()], 2)
        out["reference_image_latent"] = torch.cat([r(batch, c, 1, h, w), torch.zeros(batch, c, fr - 1, h, w).half()], 2)
        out["target_image_embed"] = r(batch, CLIP_TOKENS, 32)
        out["reference_image_embed"] = r(batch, CLIP_TOKENS, 32)
    return out


def forward_kwargs(model, batch: dict, timestep=(500, 20)) -> dict:
    """Keyword arguments for VAPTransformer.forward from a shard batch (noisy latents = x0 here)."""
    inputs = model.family.training_inputs(batch, model.config.backbone_config, model.device, model.dtype)
    n = inputs.x0.shape[0]
    return dict(
        hidden_states=torch.cat([inputs.x0, inputs.condition], model.family.channel_axis),
        timestep=torch.tensor(timestep[:n]) if n <= len(timestep) else torch.full((n,), 500),
        encoder_hidden_states=inputs.text,
        reference_hidden_states=inputs.reference,
        reference_encoder_hidden_states=inputs.reference_text,
        **inputs.extra,
    )


def slice_kwargs(kwargs: dict, i: int) -> dict:
    return {k: v[i:i + 1] if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
