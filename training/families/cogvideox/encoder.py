"""CogVideoX's clip encoder: the shard columns as CogVideoXImageToVideoPipeline prepares them."""

from __future__ import annotations

from vap.datasets.encode import ClipEncoder


class CogVideoXEncoder(ClipEncoder):
    """CogVideoXImageToVideoPipeline: latents × scaling_factor; first-frame latent alone (F'=1)."""

    family = "cogvideox"

    @classmethod
    def family_text_len(cls, path: str) -> int:
        # The transformer is built for a fixed text length; the embeddings must match it.
        from diffusers import CogVideoXTransformer3DModel

        return int(CogVideoXTransformer3DModel.load_config(path, subfolder="transformer")["max_text_seq_length"])

    def text_embed(self, ids, mask):
        return self.text_encoder(ids)[0]

    def _scale(self, latent):
        sf = self.vae.config.scaling_factor
        return latent / sf if self.vae.config.get("invert_scale_latents") else latent * sf

    def normalise(self, latent):
        return self._scale(latent)

    def image_latent(self, x):
        return self._scale(self._vae_mean(x[:, :, :1]))
