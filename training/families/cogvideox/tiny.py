"""A tiny random CogVideoX-I2V pipeline (see `vap.training.tiny.make_tiny_backbone`)."""

from __future__ import annotations

from vap.training.tiny import TEXT_DIM, TEXT_LEN, tiny_text_encoder


def build():
    """CogVideoXImageToVideoPipeline of 2 blocks, width 32, a 4-channel VAE and a tiny T5."""
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
    tokenizer, text_encoder = tiny_text_encoder("t5")
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing",
                                       rescale_betas_zero_snr=True)
    return CogVideoXImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                         transformer=transformer, scheduler=scheduler)
