"""Tiny stand-ins for the real backbones, saved in the real hub layout.

`make_tiny_backbone` builds the family's diffusers image-to-video pipeline from small configs
(random weights, seeded) and writes it with `save_pretrained`: `model_index.json` plus
`transformer/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/` (and the CLIP image encoder
for Wan). Everything downstream then loads it with `from_pretrained`, exactly as it loads
`THUDM/CogVideoX-5b-I2V` or `Wan-AI/Wan2.1-I2V-14B-480P-Diffusers` on a cluster: tests and
the demo run the real loading code, nothing is downloaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

TEXT_DIM = 32
TEXT_LEN = 16  # tokens per caption (CogVideoX needs exactly max_text_seq_length)
# Wan 2.1 I2V attends to the CLIP image tokens with separate projections (added_kv_proj_dim) and
# diffusers splits the context as "everything but the last 512 tokens is image": Wan captions are
# 512 tokens, as in the real pipeline.
WAN_TEXT_LEN = 512


def _text_encoder(kind: str):
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    # ByT5's byte tokenizer needs no vocabulary file, so it can be built offline.
    tokenizer = ByT5Tokenizer(extra_ids=0)
    common = dict(vocab_size=384, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                  relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)
    if kind == "umt5":
        return tokenizer, UMT5EncoderModel(UMT5Config(**common))
    return tokenizer, T5EncoderModel(T5Config(**common))


def _cogvideox():
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXTransformer3DModel,
    )

    latent = 4
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=2 * latent, out_channels=latent,
        time_embed_dim=32, text_embed_dim=TEXT_DIM, num_layers=2, sample_width=16, sample_height=16,
        sample_frames=9, patch_size=2, max_text_seq_length=TEXT_LEN,
        use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False,
    )
    vae = AutoencoderKLCogVideoX(
        block_out_channels=(32, 32), latent_channels=latent, layers_per_block=1, norm_num_groups=8,
        down_block_types=("CogVideoXDownBlock3D",) * 2, up_block_types=("CogVideoXUpBlock3D",) * 2,
        temporal_compression_ratio=4,
    )
    tokenizer, text_encoder = _text_encoder("t5")
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing",
                                       rescale_betas_zero_snr=True)
    return CogVideoXImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                         transformer=transformer, scheduler=scheduler)


def _wan():
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    z = 4
    # scale factors stated to match the layers (2 spatial downsamples, 1 temporal): the config's
    # defaults (8, 4) describe the real VAE and would mislead anyone computing latent shapes
    vae = AutoencoderKLWan(base_dim=16, z_dim=z, dim_mult=[1, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, True], latents_mean=[0.0] * z, latents_std=[1.0] * z,
                           scale_factor_temporal=2, scale_factor_spatial=4)
    # I2V input = noisy latents + mask (one channel per temporally compressed frame) + image latents
    mask_channels = vae.temperal_downsample.count(True) * 2
    image_encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                     num_attention_heads=2, image_size=32, patch_size=8,
                                                     projection_dim=32))
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=2 * z + mask_channels,
        out_channels=z, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=64, num_layers=2, rope_max_seq_len=64,
        image_dim=32, added_kv_proj_dim=32,  # like Wan2.1-I2V: image cross-attention of its own
    )
    tokenizer, text_encoder = _text_encoder("umt5")
    return WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                   image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
                                   image_encoder=image_encoder, transformer=transformer)


BUILDERS = {"cogvideox": _cogvideox, "wan": _wan}


def make_tiny_backbone(family: str, out: str | Path, seed: int = 0) -> Path:
    """Write a tiny random `family` I2V pipeline to `out` (idempotent: kept if already there)."""
    out = Path(out)
    if (out / "model_index.json").exists():
        return out
    torch.manual_seed(seed)
    pipe = BUILDERS[family]()
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    log.info("wrote tiny %s backbone to %s", family, out)
    return out
