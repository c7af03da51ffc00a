"""Wan's training objective (the shared call lives in `vap.training.objectives`)."""

from __future__ import annotations

import torch

from vap.training.objectives import Objective, _expand


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
