"""Wan 2.1 I2V (e.g. Wan-AI/Wan2.1-I2V-14B-480P-Diffusers) as a VAP family.

Latents are [B, C, F, H, W]; the I2V input is noisy latents + a first-frame mask + the latent of
the condition video (first frame, then zeros), concatenated on channels. Text is not in the
self-attention: only self-attention is joint, cross-attention stays per stream (the reference
attends to its own caption and its first frame's CLIP embedding). The expert's timestep is a
fixed clean t = 1, as the authors train and sample it (the last of the scheduler's sigmas,
0.001 × 1000; their pipeline passes 1). The modulation tables are read outside their module's forward, so ZeRO-3 is
told about them (`direct_params`).
"""

from __future__ import annotations

import torch

from vap.errors import DataError, ModelError
from vap.training.families.base import (
    Family,
    GenerationDefaults,
    Stream,
    TrainingInputs,
    batch_tensor,
    check_same_grid,
)
from vap.training.families.wan.encoder import WanEncoder
from vap.training.rope import Positions, axis_tables

TEXT_TOKENS = 512  # umT5 context length of the Wan pipelines


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on [B, L, heads, d] (diffusers' WanAttnProcessor, interleaved pairs)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], -1).flatten(-2).type_as(x)


class Wan(Family):
    name = "wan"
    encoder = WanEncoder
    generation = GenerationDefaults(guidance_scale=5.0, dynamic_cfg=False, height=480, width=832)
    transformer_class = "WanTransformer3DModel"
    frame_axis = 2
    channel_axis = 1
    embedder_names = ("patch_embedding", "condition_embedder")
    blocks_attr = "blocks"

    def default_blocks(self, num_layers: int) -> list[int]:
        return list(range(0, num_layers, 4))  # the released model: 0, 4, …, 36 of 40

    def direct_params(self, backbone, expert_blocks):
        params = [backbone.scale_shift_table]
        for key, expert_block in expert_blocks.items():
            params += [backbone.blocks[int(key)].scale_shift_table, expert_block.scale_shift_table]
        return params

    # --- forward pieces --------------------------------------------------------------------
    def check_text(self, config, text):
        # diffusers' WanAttnProcessor takes all but the last 512 context tokens as image tokens
        if config.get("added_kv_proj_dim") and text.shape[1] != TEXT_TOKENS:
            raise ModelError(f"captions have {text.shape[1]} tokens but this Wan I2V backbone needs {TEXT_TOKENS} "
                             f"(its attention splits image and text context at {TEXT_TOKENS}); encode with "
                             f"text_len {TEXT_TOKENS}")

    def target_positions(self, config, video_shape) -> Positions:
        p_t, p_h, p_w = config["patch_size"]
        f, h, w = video_shape[2] // p_t, video_shape[3] // p_h, video_shape[4] // p_w
        return Positions(*(torch.arange(n, dtype=torch.float64) for n in (f, h, w)))

    def rope(self, config, positions: Positions):
        d = config["attention_head_dim"]
        hw = 2 * (d // 6)
        cos, sin = axis_tables((d - 2 * hw, hw, hw), positions, 10000.0, torch.float64)
        return cos[None, :, None, :], sin[None, :, None, :]

    def embed(self, mods, video, text, timestep, image_embeds, rope) -> Stream:
        tokens = mods.patch_embedding(video).flatten(2).transpose(1, 2)
        temb, proj, context, image = mods.condition_embedder(timestep, text, image_embeds)
        if image is not None:
            context = torch.cat([image, context], 1)
        return Stream(video=tokens, text=context, temb=temb, rope=rope, extra={"proj": proj.unflatten(1, (6, -1))})

    def block(self, block, s: Stream) -> Stream:
        return s.but(video=block(s.video, s.text, s.extra["proj"], s.rope))

    def qkv(self, block, s: Stream):
        shift, scale, gate, c_shift, c_scale, c_gate = (block.scale_shift_table + s.extra["proj"].float()).chunk(6, 1)
        x = (block.norm1(s.video.float()) * (1 + scale) + shift).type_as(s.video)
        attn = block.attn1
        q = attn.norm_q(attn.to_q(x)).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(x)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(x).unflatten(2, (attn.heads, -1))
        q, k = _apply_rope(q, *s.rope), _apply_rope(k, *s.rope)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), (gate, c_shift, c_scale, c_gate)

    def finish(self, block, s: Stream, out: torch.Tensor, mods) -> Stream:
        gate, c_shift, c_scale, c_gate = mods
        attn = block.attn1
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2).type_as(s.video)))
        h = (s.video.float() + out * gate).type_as(s.video)
        h = h + block.attn2(block.norm2(h.float()).type_as(h), s.text, None, None)
        x = (block.norm3(h.float()) * (1 + c_scale) + c_shift).type_as(h)
        h = (h.float() + block.ffn(x).float() * c_gate).type_as(h)
        return s.but(video=h)

    def head(self, backbone, s: Stream, video_shape) -> torch.Tensor:
        b, _, f, h, w = video_shape
        p_t, p_h, p_w = backbone.config.patch_size
        shift, scale = (backbone.scale_shift_table + s.temb.unsqueeze(1)).chunk(2, dim=1)
        x = (backbone.norm_out(s.video.float()) * (1 + scale) + shift).type_as(s.video)
        x = backbone.proj_out(x)
        x = x.reshape(b, f // p_t, h // p_h, w // p_w, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def reference_timestep(self, timestep, mode):
        # the authors' clean reference: t = 1 (σ = 0.001) in training and at inference, in every mode
        return torch.ones_like(timestep)

    # --- training ----------------------------------------------------------------------------
    @staticmethod
    def mask(config, latents: torch.Tensor) -> torch.Tensor:
        """Wan I2V's first-frame mask: ones on the first latent frame, one channel per VAE
        temporal sub-frame (in_channels = 2·z + those)."""
        b, z, f, h, w = latents.shape
        channels = config["in_channels"] - 2 * z
        if channels < 0:
            raise DataError(f"latents have {z} channels but this Wan transformer takes {config['in_channels']} "
                            "inputs; encode with the backbone's own VAE")
        m = latents.new_zeros(b, channels, f, h, w)
        m[:, :, 0] = 1
        return m

    def training_inputs(self, batch, config, device, dtype) -> TrainingInputs:
        x0 = batch_tensor(batch, "target_latent", device, dtype)
        ref = batch_tensor(batch, "reference_latent", device, dtype)
        check_same_grid(x0, ref, "wan batch")
        extra = {}
        if config.get("image_dim"):
            extra = {"encoder_hidden_states_image": batch_tensor(batch, "target_image_embed", device, dtype),
                     "reference_encoder_hidden_states_image": batch_tensor(batch, "reference_image_embed", device,
                                                                          dtype)}
        return TrainingInputs(
            x0=x0,
            condition=torch.cat([self.mask(config, x0), batch_tensor(batch, "target_image_latent", device, dtype)], 1),
            reference=torch.cat([ref, self.mask(config, ref), batch_tensor(batch, "reference_image_latent", device,
                                                                           dtype)], 1),
            text=batch_tensor(batch, "target_text", device, dtype),
            reference_text=batch_tensor(batch, "reference_text", device, dtype),
            extra=extra,
        )

    def decode(self, vae, latents):
        c = vae.config
        mean = torch.tensor(c.latents_mean, device=latents.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(c.latents_std, device=latents.device).view(1, -1, 1, 1, 1)
        return vae.decode((latents.float() * std + mean).to(vae.dtype), return_dict=False)[0]

    def objective(self, backbone: str):
        from diffusers import FlowMatchEulerDiscreteScheduler

        from vap.training.families.base import MODEL_FILES, resolve_backbone
        from vap.training.families.wan.objective import FlowMatchingObjective

        local = resolve_backbone(backbone, MODEL_FILES)
        config = FlowMatchEulerDiscreteScheduler.load_config(local, subfolder="scheduler")
        return FlowMatchingObjective(self, config)

    def build_tiny(self):
        from vap.training.families.wan.tiny import build

        return build()
