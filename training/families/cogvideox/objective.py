"""CogVideoX's training objective (the shared call lives in `vap.training.objectives`)."""

from __future__ import annotations

import torch

from vap.training.objectives import Objective, _expand


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
