"""Checkpoints: DeepSpeed ZeRO state for exact resume + the expert alone for serving.

Layout of one checkpoint folder (Ray Train merges every rank's files into it):
  vap/                        DeepSpeed ZeRO checkpoint, frozen backbone excluded
      mp_rank_00_model_states.pt, zero_pp_rank_<r>_mp_rank_00_optim_states.pt, …
  latest                      DeepSpeed's tag pointer
  expert/                     the consolidated expert (safetensors, save_pretrained layout)
  vap-checkpoint.json         step, metrics, data snapshot — written by rank 0
Ray registers a checkpoint only after every file is uploaded, so a reader that goes through
Ray (`get_checkpoint`) or the registry never sees a partial one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

TAG = "vap"
EXPERT_DIR = "expert"
META = "vap-checkpoint.json"


def save(engine, model, folder: Path, *, step: int, loader_state: dict, meta: dict) -> None:
    """Collective: every rank calls it with its own empty `folder`."""
    import deepspeed

    engine.save_checkpoint(str(folder), tag=TAG, client_state={"step": step, "loader": loader_state},
                           exclude_frozen_parameters=True)
    rank = torch.distributed.get_rank()
    # ZeRO-3 shards every parameter; gather the expert's (collective) and let rank 0 write it.
    params = list(model.expert_parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        if rank == 0:
            model.save_expert(folder / EXPERT_DIR)
    if rank == 0:
        (folder / META).write_text(json.dumps({"step": step, **meta}, indent=2, sort_keys=True))


def restore(engine, folder: Path) -> tuple[int, dict | None]:
    """Load the engine state saved by `save`; returns (step, loader state)."""
    _, client = engine.load_checkpoint(str(folder), tag=TAG, load_module_strict=False)
    if client is None:
        raise RuntimeError(f"{folder}: no DeepSpeed checkpoint with tag {TAG!r}")
    log.info("resumed from %s at step %d", folder, client["step"])
    return client["step"], client.get("loader")


def partition_fingerprint(params) -> str:
    """sha256 over this rank's shard of `params` (ZeRO-3: `ds_tensor`), to prove they never change."""
    h = hashlib.sha256()
    for p in params:
        t = getattr(p, "ds_tensor", p).detach().cpu().contiguous()
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
