"""Tiny stand-ins for the real backbones, saved in the real hub layout.

`make_tiny_backbone` builds the family's diffusers image-to-video pipeline from small configs
(random weights, seeded; each family's builder is `tiny.py` in its folder) and writes it with
`save_pretrained`: `model_index.json` plus `transformer/`, `vae/`, `text_encoder/`, `tokenizer/`,
`scheduler/` (and the CLIP image encoder for Wan). Everything downstream then loads it with `from_pretrained`, exactly as it loads
`THUDM/CogVideoX-5b-I2V` or `Wan-AI/Wan2.1-I2V-14B-480P-Diffusers` on a cluster: tests and
the demo run the real loading code, nothing is downloaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

TEXT_DIM = 32
TEXT_LEN = 16  # tokens per caption (CogVideoX needs exactly max_text_seq_length)
# Wan 2.1 I2V attends to the CLIP image tokens with separate projections (added_kv_proj_dim) and
# diffusers splits the context as "everything but the last 512 tokens is image": Wan captions are
# 512 tokens, as in the real pipeline.
WAN_TEXT_LEN = 512


def tiny_text_encoder(kind: str):
    """A one-layer T5 (or umT5) encoder of width TEXT_DIM with a byte tokenizer."""
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    # ByT5's byte tokenizer needs no vocabulary file, so it can be built offline.
    tokenizer = ByT5Tokenizer(extra_ids=0)
    common = dict(vocab_size=384, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                  relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)
    if kind == "umt5":
        return tokenizer, UMT5EncoderModel(UMT5Config(**common))
    return tokenizer, T5EncoderModel(T5Config(**common))


def make_tiny_backbone(family: str, out: str | Path, seed: int = 0) -> Path:
    """Write a tiny random `family` I2V pipeline to `out` (idempotent: kept if already there)."""
    out = Path(out)
    if (out / "model_index.json").exists():
        return out
    torch.manual_seed(seed)
    from vap.training.families import get_family

    pipe = get_family(family).build_tiny()
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    log.info("wrote tiny %s backbone to %s", family, out)
    return out
