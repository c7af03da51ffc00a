"""CogVideoX (I2V 1.0, e.g. THUDM/CogVideoX-5b-I2V) as a VAP family.

Latents are [B, F, C, H, W]; the I2V input is the noisy latents with the first-frame latent
(zero-padded to F frames) concatenated on channels. Text tokens and video tokens share each
block's attention; RoPE covers the video tokens only. The expert's timestep is the target's
(joint mode), its output head does not exist.
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
from vap.training.families.cogvideox.encoder import CogVideoXEncoder
from vap.training.rope import Positions, axis_tables


class CogVideoX(Family):
    name = "cogvideox"
    encoder = CogVideoXEncoder
    generation = GenerationDefaults(guidance_scale=6.0, dynamic_cfg=True, height=480, width=720)
    max_references = None  # the authors' multi-reference training: each reference its caption and table
    transformer_class = "CogVideoXTransformer3DModel"
    frame_axis = 1
    channel_axis = 2
    embedder_names = ("patch_embed", "time_proj", "time_embedding")
    blocks_attr = "transformer_blocks"

    def default_blocks(self, num_layers: int) -> list[int]:
        return list(range(num_layers - 1))  # the paper: blocks 0..40 of 42

    def check_config(self, config) -> None:
        if config.get("patch_size_t") or config.get("ofs_embed_dim"):
            raise ModelError("CogVideoX 1.5 backbones (patch_size_t / ofs_embed_dim set) are not supported; "
                             "use a CogVideoX 1.0 I2V backbone such as THUDM/CogVideoX-5b-I2V")
        if not config.get("use_rotary_positional_embeddings"):
            raise ModelError("this CogVideoX backbone has no RoPE (use_rotary_positional_embeddings=false), "
                             "so the reference's temporal bias cannot apply; use an I2V backbone with RoPE")

    # --- forward pieces --------------------------------------------------------------------
    def target_positions(self, config, video_shape) -> Positions:
        from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import (
            get_resize_crop_region_for_grid,
        )

        frames, height, width = video_shape[1], video_shape[3], video_shape[4]
        p = config["patch_size"]
        gh, gw = height // p, width // p
        (top, left), (bottom, right) = get_resize_crop_region_for_grid(
            (gh, gw), config["sample_width"] // p, config["sample_height"] // p)
        # exactly the grids of diffusers' get_3d_rotary_pos_embed (what the I2V pipeline passes)
        return Positions(
            t=torch.linspace(0, frames * (frames - 1) / frames, frames),
            h=torch.linspace(top, bottom * (gh - 1) / gh, gh),
            w=torch.linspace(left, right * (gw - 1) / gw, gw),
        )

    def rope(self, config, positions: Positions):
        d = config["attention_head_dim"]
        return axis_tables((d // 4, d // 8 * 3, d // 8 * 3), positions, 10000.0, torch.float32)

    def check_references(self, config, m, reference_text) -> None:
        length = config["max_text_seq_length"]
        if reference_text.shape[1] != m * length:
            raise ModelError(f"{m} reference(s) need {m} caption(s) of {length} tokens each ({m * length}), got "
                             f"{reference_text.shape[1]} tokens; concatenate each reference's caption embedding "
                             "in the references' order")

    def embed(self, mods, video, text, timestep, image_embeds, rope) -> Stream:
        """Caption + video tokens. m references (m captions after one another, m·F frames) are
        embedded one by one, as the authors do: each with its own caption and the learned position
        table of one clip; their text and video tokens are then concatenated in order."""
        temb = mods.time_embedding(mods.time_proj(timestep).to(video.dtype))
        m = max(1, text.shape[1] // mods.patch_embed.max_text_seq_length)
        n = text.shape[1] // m
        parts = [mods.patch_embed(t, v) for t, v in zip(text.chunk(m, 1), video.chunk(m, 1), strict=True)]
        return Stream(video=torch.cat([p[:, n:] for p in parts], 1), text=torch.cat([p[:, :n] for p in parts], 1),
                      temb=temb, rope=rope)

    def block(self, block, s: Stream) -> Stream:
        video, text = block(hidden_states=s.video, encoder_hidden_states=s.text, temb=s.temb,
                            image_rotary_emb=s.rope)
        return s.but(video=video, text=text)

    def qkv(self, block, s: Stream):
        from diffusers.models.embeddings import apply_rotary_emb

        attn = block.attn1
        n_video, n_text, gate, text_gate = block.norm1(s.video, s.text, s.temb)
        x = torch.cat([n_text, n_video], 1)
        q, k, v = (f(x).unflatten(2, (attn.heads, -1)).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        n = n_text.shape[1]
        q = torch.cat([q[:, :, :n], apply_rotary_emb(q[:, :, n:], s.rope)], 2)
        k = torch.cat([k[:, :, :n], apply_rotary_emb(k[:, :, n:], s.rope)], 2)
        return q, k, v, (gate, text_gate)

    def finish(self, block, s: Stream, out: torch.Tensor, gates) -> Stream:
        attn = block.attn1
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2)))
        n = s.text.shape[1]
        gate, text_gate = gates
        video = s.video + gate * out[:, n:]
        text = s.text + text_gate * out[:, :n]
        n_video, n_text, gate_ff, text_gate_ff = block.norm2(video, text, s.temb)
        ff = block.ff(torch.cat([n_text, n_video], 1))
        return s.but(video=video + gate_ff * ff[:, n:], text=text + text_gate_ff * ff[:, :n])

    def head(self, backbone, s: Stream, video_shape) -> torch.Tensor:
        b, f, _, h, w = video_shape
        x = backbone.norm_final(s.video)
        x = backbone.norm_out(x, temb=s.temb)
        x = backbone.proj_out(x)
        p = backbone.config.patch_size
        x = x.reshape(b, f, h // p, w // p, -1, p, p)
        return x.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)

    def reference_timestep(self, timestep, mode):
        # the authors' CogVideoX expert shares the target's t; one_way fixes it so K/V can be cached
        return timestep if mode == "joint" else torch.zeros_like(timestep)

    # --- training ----------------------------------------------------------------------------
    def training_inputs(self, batch, config, device, dtype) -> TrainingInputs:
        def latents(key):  # shards are [B, C, F, h, w]; the transformer takes [B, F, C, h, w]
            return batch_tensor(batch, key, device, dtype).permute(0, 2, 1, 3, 4)

        check_same_grid(batch_tensor(batch, "target_latent", "cpu", None),
                        batch_tensor(batch, "reference_latent", "cpu", None), "cogvideox batch")
        x0 = latents("target_latent")
        ref = latents("reference_latent")
        # m references along time: each gets its own first-frame latent at its own first frame
        frames, m = x0.shape[1], max(1, ref.shape[1] // x0.shape[1])
        ref_images = latents("reference_image_latent")
        if m > 1 and ref_images.shape[1] != m:
            raise DataError(f"cogvideox batch: {m} references need {m} first-frame latents, got "
                            f"{ref_images.shape[1]}; encode each reference's first frame")
        ref_condition = torch.cat([self.first_frame_condition(ref_images[:, i:i + 1], ref.shape[1] // m)
                                   for i in range(m)], 1)
        return TrainingInputs(
            x0=x0,
            condition=self.first_frame_condition(latents("target_image_latent"), frames),
            reference=torch.cat([ref, ref_condition], 2),
            text=batch_tensor(batch, "target_text", device, dtype),
            reference_text=batch_tensor(batch, "reference_text", device, dtype),
        )

    @staticmethod
    def first_frame_condition(image_latent: torch.Tensor, frames: int) -> torch.Tensor:
        """The first-frame latent [B, 1, C, h, w] zero-padded to `frames` (CogVideoX I2V's format)."""
        pad = image_latent.new_zeros(image_latent.shape[0], frames - image_latent.shape[1], *image_latent.shape[2:])
        return torch.cat([image_latent[:, :1], pad], 1)

    def decode(self, vae, latents):
        # inverse of the encoder's scaling (CogVideoXImageToVideoPipeline.decode_latents)
        sf = vae.config.scaling_factor
        latents = latents.permute(0, 2, 1, 3, 4)
        latents = latents * sf if vae.config.get("invert_scale_latents") else latents / sf
        return vae.decode(latents.to(vae.dtype)).sample

    def objective(self, backbone: str):
        from diffusers import CogVideoXDDIMScheduler

        from vap.training.families.base import MODEL_FILES, resolve_backbone
        from vap.training.families.cogvideox.objective import VPredictionObjective

        local = resolve_backbone(backbone, MODEL_FILES)
        scheduler = CogVideoXDDIMScheduler.from_pretrained(local, subfolder="scheduler")
        return VPredictionObjective(self, scheduler)

    def build_tiny(self):
        from vap.training.families.cogvideox.tiny import build

        return build()
