"""Training objectives, one per family, over the shard batch format of docs/CONTRACTS.md.

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


class VPredictionObjective(Objective):
    """CogVideoX: DDPM v-prediction turned into x̂0, loss weighted by 1/(1-ᾱ_t), t uniform."""

    def __init__(self, family, scheduler):
        super().__init__(family, dict(scheduler.config))
        self.alphas_cumprod = scheduler.alphas_cumprod.to(torch.float32)

    def noise(self, x0, generator):
        t = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), generator=generator)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
        a = _expand(self.alphas_cumprod[t], x0)
        noisy = (a.sqrt() * x0.float() + (1 - a).sqrt() * eps).to(x0.dtype)
        return noisy, t, {"alpha": a}

    def loss(self, pred, x0, noisy, aux):
        a = aux["alpha"]
        x0_hat = a.sqrt() * noisy - (1 - a).sqrt() * pred
        per_sample = ((x0_hat - x0) ** 2).flatten(1).mean(1)
        return (per_sample / (1 - a).flatten()).mean()


class FlowMatchingObjective(Objective):
    """Wan: x_t = (1-σ)x0 + σε, target ε - x0, σ logit-normal(0, 1), no shift."""

    def noise(self, x0, generator):
        sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=generator))
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
        s = _expand(sigma, x0)
        noisy = ((1 - s) * x0.float() + s * eps).to(x0.dtype)
        return noisy, sigma * self.num_train_timesteps, {"eps": eps}

    def loss(self, pred, x0, noisy, aux):
        return ((pred - (aux["eps"] - x0)) ** 2).mean()
