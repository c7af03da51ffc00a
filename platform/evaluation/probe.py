"""Does an expert use its reference? Measurements on the model itself, without generating.

`vap eval` judges generated videos; when VAP and the backbone alone come out the same, these
say why (docs/CLAIMS.md §2):
- `reference_losses`: the validation denoising loss with the true reference, a mismatched one
  (another condition's clip), pure noise in its place and no reference at all, at the same fixed
  noise and timesteps. If true ≈ mismatched ≈ none, the target is predictable without the
  reference and the expert has nothing to learn from it.
- `reference_attention_share`: the share of each target query's attention that lands on the
  reference tokens, per expert block (0: the reference is ignored by construction).
- `expert_drift`: how far training moved each expert block from the backbone block it was
  cloned from (relative L2), i.e. whether the expert trained at all.

Batches are shard batches (docs/CONTRACTS.md); `load_split` reads a whole split into memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

LOSS_SEED = 1234  # the same fixed noise as `vap eval`'s loss and the trainer's eval_loss
REFERENCE_KEYS = ("reference_latent", "reference_image_latent", "reference_text")


def load_split(snapshot_uri: str, split: str, cache, limit: int | None = None) -> dict:
    """The whole `split` of a snapshot as one batch (tensors stacked, strings as lists)."""
    from vap.datasets.loader import make_loader

    rows: dict[str, list] = {}
    n = 0
    for batch in make_loader(snapshot_uri, split, batch_size=1, seed=0, local_cache=cache, shuffle=False):
        for k, v in batch.items():
            rows.setdefault(k, []).append(v)
        n += 1
        if limit and n >= limit:
            break
    return {k: torch.cat(v) if isinstance(v[0], torch.Tensor) else sum(v, []) for k, v in rows.items()}


def take(batch: dict, index) -> dict:
    """Rows `index` (a tensor or list of ints) of a batch."""
    index = torch.as_tensor(index)
    return {k: v[index] if isinstance(v, torch.Tensor) else [v[i] for i in index.tolist()] for k, v in batch.items()}


def mismatched(batch: dict) -> dict:
    """The batch with each row's reference taken from the next row of another condition."""
    conditions = batch["condition"]
    n = len(conditions)
    order = []
    for i in range(n):
        j = next((j % n for j in range(i + 1, i + n) if conditions[j % n] != conditions[i]), None)
        if j is None:
            raise ValueError("a mismatched reference needs rows of at least two conditions")
        order.append(j)
    out = dict(batch)
    for k in REFERENCE_KEYS:
        out[k] = batch[k][torch.tensor(order)]
    return out


def noised(batch: dict, seed: int = 0) -> dict:
    """The batch with its reference latents replaced by Gaussian noise of the same std."""
    g = torch.Generator().manual_seed(seed)
    out = dict(batch)
    for k in ("reference_latent", "reference_image_latent"):
        x = batch[k].float()
        out[k] = (torch.randn(x.shape, generator=g) * x.std()).to(batch[k].dtype)
    return out


class _NoReference:
    """Calls the model without the reference stream: exactly the backbone."""

    def __init__(self, model):
        self.module = model

    def __call__(self, **kwargs):
        return self.module(**{k: v for k, v in kwargs.items() if not k.startswith("reference")})


@torch.no_grad()
def reference_losses(model, objective, batch: dict, batch_size: int = 16, seed: int = LOSS_SEED) -> dict[str, float]:
    """Mean denoising loss over `batch` with the true / mismatched / noise / no reference; every
    variant sees the same noise and timesteps (one generator seeded per chunk)."""
    variants = {"true": (batch, model), "mismatched": (mismatched(batch), model),
                "noise": (noised(batch), model), "none": (batch, _NoReference(model))}
    out = {}
    n = len(batch["condition"])
    for name, (rows, engine) in variants.items():
        total = 0.0
        for start in range(0, n, batch_size):
            chunk = take(rows, list(range(start, min(n, start + batch_size))))
            g = torch.Generator().manual_seed(seed + start)
            total += objective(engine, chunk, generator=g).item() * len(chunk["condition"])
        out[name] = total / n
    return out


@torch.no_grad()
def reference_loss_rows(model, objective, batch: dict, seed: int = LOSS_SEED) -> dict[str, list[float]]:
    """Per row, the denoising loss with the true / mismatched / noise / no reference. Row i draws
    its noise and timestep from `seed + i` in every variant, so the variants are paired row by row
    (`reference_gap` bootstraps their differences)."""
    variants = {"true": (batch, model), "mismatched": (mismatched(batch), model),
                "noise": (noised(batch), model), "none": (batch, _NoReference(model))}
    out = {}
    for name, (rows, engine) in variants.items():
        out[name] = [objective(engine, take(rows, [i]), generator=torch.Generator().manual_seed(seed + i)).item()
                     for i in range(len(batch["condition"]))]
    return out


def reference_gap(rows: dict[str, list[float]], other: str, than: str = "true") -> dict[str, float]:
    """How much higher the loss is with reference `other` than with `than`, row by row: the mean
    difference and its bootstrap 95 % interval (low > 0: `than` is measurably better)."""
    from vap.evaluation.metrics import bootstrap_ci

    diff = [a - b for a, b in zip(rows[other], rows[than], strict=True)]
    mean, low, high = bootstrap_ci(diff)
    return {"mean": mean, "low": low, "high": high, "n": len(diff)}


@contextlib.contextmanager
def recording_attention() -> Iterator[list[float]]:
    """Patch `vap.training.attention.attend` to record, per call, the share of the target
    queries' softmax mass on the reference keys (mean over heads and queries)."""
    from vap.training import attention

    shares: list[float] = []
    original = attention.attend

    def attend(q_t, k_t, v_t, q_r, k_r, v_r, mode):
        if k_r is not None:
            logits = q_t @ torch.cat([k_t, k_r], 2).transpose(-1, -2) / q_t.shape[-1] ** 0.5
            shares.append(float(logits.softmax(-1)[..., k_t.shape[2]:].sum(-1).mean()))
        return original(q_t, k_t, v_t, q_r, k_r, v_r, mode)

    attention.attend = attend
    try:
        yield shares
    finally:
        attention.attend = original


@torch.no_grad()
def reference_attention_share(model, objective, batch: dict, seed: int = LOSS_SEED) -> list[float]:
    """Per expert block (in order), the target's attention share on the reference tokens."""
    with recording_attention() as shares:
        objective(model, batch, generator=torch.Generator().manual_seed(seed))
    return shares


@torch.no_grad()
def expert_drift(model) -> dict[str, float]:
    """Per expert block, ‖expert − backbone block‖ / ‖backbone block‖ over all its weights."""
    blocks = model.family.blocks(model.backbone)
    out = {}
    for key, expert_block in model.expert.blocks.items():
        base = dict(blocks[int(key)].named_parameters())
        diff = sum(float((p - base[n]).pow(2).sum()) for n, p in expert_block.named_parameters())
        norm = sum(float(base[n].pow(2).sum()) for n, _ in expert_block.named_parameters())
        out[key] = (diff / norm) ** 0.5
    return out
