"""Train an expert in one process on a snapshot split held in memory.

For the claims run (tools/claims.py) and its tests: many small experts on one CPU, where a Ray
Train + DeepSpeed job per expert (`vap train`) would spend its time starting up. The loss is
the family's objective, as in `vap train`; each step pairs every target with a fresh random
clip of its own condition (another target of the split), as the authors redraw references
from a condition's list on every pass.
"""

from __future__ import annotations

import logging
import math

import torch

from vap.evaluation.probe import take

log = logging.getLogger(__name__)


def draw_references(batch: dict, rows: torch.Tensor, generator: torch.Generator) -> dict:
    """Rows `rows` of `batch`, each with the target clip of another random row of the same
    condition as its reference (its latents, first-frame latent and caption)."""
    conditions = batch["condition"]
    out = take(batch, rows)
    picks = []
    for i in rows.tolist():
        same = [j for j, c in enumerate(conditions) if c == conditions[i] and j != i]
        picks.append(same[int(torch.randint(len(same), (1,), generator=generator))] if same else i)
    picks = torch.tensor(picks)
    out["reference_latent"] = batch["target_latent"][picks]
    out["reference_image_latent"] = batch["target_image_latent"][picks]
    out["reference_text"] = batch["target_text"][picks]
    return out


def train_expert(model, objective, batch: dict, *, steps: int, batch_size: int, lr: float, seed: int = 0,
                 progress=None) -> list[float]:
    """AdamW on the expert only, cosine schedule, grad-norm clip 1; returns the step losses."""
    gen = torch.Generator().manual_seed(seed)
    params = list(model.expert_parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    n, losses = len(batch["condition"]), []
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        rows = torch.randint(0, n, (batch_size,), generator=gen)
        loss = objective(model, draw_references(batch, rows, gen), generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if progress:
            progress(step, steps, losses[-1])
    model.eval()
    return losses
