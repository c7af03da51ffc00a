"""Wan's clip encoder: the shard columns as WanImageToVideoPipeline prepares them."""

from __future__ import annotations

import html
import re

import torch

from vap.datasets.encode import ClipEncoder


class WanEncoder(ClipEncoder):
    """WanImageToVideoPipeline: (latent − mean) / std; condition = first frame then zeros (F'=F);
    CLIP penultimate hidden state of the first frame; captions cleaned and zero-padded."""

    family = "wan"
    components = ("vae", "text_encoder", "tokenizer", "image_encoder", "image_processor")
    default_text_len = 512

    @staticmethod
    def clean(caption: str) -> str:
        # The pipeline's prompt_clean without ftfy: unescape HTML, collapse whitespace.
        return re.sub(r"\s+", " ", html.unescape(html.unescape(caption))).strip()

    def text_embed(self, ids, mask):
        hidden = self.text_encoder(ids, mask).last_hidden_state
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)  # padding positions are zeros

    def normalise(self, latent):
        c = self.vae.config
        mean = torch.tensor(c.latents_mean, device=latent.device, dtype=latent.dtype).view(1, -1, 1, 1, 1)
        std = torch.tensor(c.latents_std, device=latent.device, dtype=latent.dtype).view(1, -1, 1, 1, 1)
        return (latent - mean) / std

    def image_latent(self, x):
        condition = torch.cat([x[:, :, :1], torch.zeros_like(x[:, :, 1:])], dim=2)
        return self.normalise(self._vae_mean(condition))

    def image_embed(self, first_frame):
        pixels = self.image_processor(images=first_frame, return_tensors="pt").pixel_values
        out = self.image_encoder(pixel_values=pixels.to(self.device, self.image_encoder.dtype), output_hidden_states=True)
        return out.hidden_states[-2]
