"""A tiny random Wan2.1-I2V pipeline (see `vap.training.tiny.make_tiny_backbone`)."""

from __future__ import annotations

from vap.training.tiny import TEXT_DIM, tiny_text_encoder


def build():
    """WanImageToVideoPipeline of 2 blocks, width 32, a 4-channel VAE, a tiny umT5 and CLIP."""
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
    tokenizer, text_encoder = tiny_text_encoder("umt5")
    return WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                   image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
                                   image_encoder=image_encoder, transformer=transformer)
