"""Training objectives over the shard batch format of docs/CONTRACTS.md: the shared part.

Each family's own objective (its noise and loss) lives in its folder, e.g.
`vap.training.families.cogvideox.objective`.

`objective(engine, batch, generator=g, caption_dropout=p, null_text=t)` returns the scalar loss
on the target tokens. The engine (DeepSpeed or the bare VAPTransformer) is only *called*;
its config is read from `engine.module` when there is one. The reference latents stay clean.
"""

from __future__ import annotations

import torch

from vap.errors import DataError


def _module(engine):
    return getattr(engine, "module", engine)


def drop_captions(text, ref_text, null_text, p: float, generator):
    """With probability p per sample blank both captions (the paper's 2%, for guidance)."""
    if p <= 0:
        return text, ref_text
    if null_text is None:
        raise DataError("caption dropout needs the empty-caption embedding (null_text.npy of the snapshot)")
    drop = (torch.rand(text.shape[0], generator=generator) < p).to(text.device)[:, None, None]
    null = null_text.to(text.device, text.dtype)
    if null.shape != text.shape[1:]:
        raise DataError(f"null_text has shape {tuple(null.shape)} but captions are {tuple(text.shape[1:])}; "
                        "rebuild the snapshot with one text length")
    return torch.where(drop, null, text), torch.where(drop, null, ref_text)


class Objective:
    def __init__(self, family, scheduler_config: dict):
        self.family = family
        self.num_train_timesteps = int(scheduler_config.get("num_train_timesteps", 1000))

    def noise(self, x0: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(noisy latents, timestep [B], whatever `loss` needs)."""
        raise NotImplementedError

    def loss(self, pred: torch.Tensor, x0: torch.Tensor, noisy: torch.Tensor, aux: dict) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, engine, batch: dict, generator: torch.Generator | None = None,
                 caption_dropout: float = 0.0, null_text: torch.Tensor | None = None) -> torch.Tensor:
        model = _module(engine)
        inputs = self.family.training_inputs(batch, model.config.backbone_config, model.device, model.dtype)
        text, ref_text = drop_captions(inputs.text, inputs.reference_text, null_text, caption_dropout, generator)
        noisy, timestep, aux = self.noise(inputs.x0, generator)
        axis = self.family.channel_axis
        pred = engine(
            hidden_states=torch.cat([noisy, inputs.condition], axis),
            timestep=timestep.to(model.device),
            encoder_hidden_states=text,
            reference_hidden_states=inputs.reference,
            reference_encoder_hidden_states=ref_text,
            return_dict=False,
            **inputs.extra,
        )[0]
        return self.loss(pred.float(), inputs.x0.float(), noisy.float(), aux)


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.device, torch.float32).view(-1, *([1] * (like.ndim - 1)))
