"""The `Family` interface: what differs between backbone families (torchtitan's ModelSpec idea).

The VAP transformer, the objectives' callers, the data build and the generation pipeline ask
the `Family` instead of testing `if family == ...`. A family knows its diffusers transformer
class, which blocks the paper gives an expert, how a stream is embedded, how one block runs
(alone or joint with the reference stream), the output head, its RoPE, the expert's timestep,
its training objective, its clip encoder (`encoder`, the inverse of `decode`), its tiny
stand-in (`build_tiny`) and how its pipeline prepares inputs and decodes latents.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from vap.errors import DataError, ModelError


@dataclass
class Stream:
    """One token stream between blocks: video tokens, text tokens and the conditioning."""

    video: torch.Tensor  # [B, N, D]
    text: torch.Tensor  # [B, L, D] (Wan: the cross-attention context, CLIP image tokens first)
    temb: torch.Tensor  # timestep embedding
    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin for the video tokens
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific (Wan: per-block modulation)

    def but(self, **changes) -> Stream:
        return replace(self, **changes)


@dataclass
class TrainingInputs:
    """A shard batch turned into the transformer's inputs (native latent layout, model dtype)."""

    x0: torch.Tensor  # clean target latents
    condition: torch.Tensor  # I2V condition channels, concatenated after the noisy latents
    reference: torch.Tensor  # clean reference latents + their condition channels
    text: torch.Tensor
    reference_text: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # family-specific forward kwargs


def resolve_backbone(backbone: str, patterns: list[str] | None = None) -> str:
    """A local folder of a backbone: a path, a file:// or s3:// URI (downloaded once), or a hub
    id (a snapshot of the files matching `patterns`, default all, in the Hugging Face cache)."""
    from vap.storage import is_storage_location, materialize

    if is_storage_location(backbone):
        return str(materialize(backbone))
    from huggingface_hub import snapshot_download

    try:
        wanted = None if patterns is None else ["model_index.json", *patterns]
        return snapshot_download(backbone, allow_patterns=wanted)
    except Exception as err:  # offline, unknown repo, bad id: all mean "cannot use this backbone here"
        raise ModelError(f"backbone {backbone!r} is not a local folder, a file:// or s3:// URI, or a reachable hub "
                         f"repo ({type(err).__name__}); check the name, or download it and give its path") from None


# The authors' negative prompt, for the target and for the reference caption alike (their CogVideoX
# and Wan MoT pipelines' default; Wan's own pipeline example uses it too).
AUTHORS_NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly "
    "drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy "
    "background, three legs, many people in the background, walking backwards"
)


@dataclass(frozen=True)
class GenerationDefaults:
    """What the authors' inference script for the family passes (used when a caller gives nothing)."""

    guidance_scale: float
    dynamic_cfg: bool  # CogVideoX's cosine ramp of the guidance scale over the steps
    height: int
    width: int
    negative_prompt: str = AUTHORS_NEGATIVE_PROMPT
    reference_negative_prompt: str = AUTHORS_NEGATIVE_PROMPT


MODEL_FILES = ["transformer/*", "scheduler/*"]  # what the VAP transformer and the objectives read


def batch_tensor(batch: dict, key: str, device, dtype) -> torch.Tensor:
    if key not in batch:
        raise DataError(f"batch has no '{key}' (has {sorted(batch)}); rebuild the shards for this family")
    return torch.as_tensor(batch[key]).to(device=device, dtype=dtype)


def check_same_grid(target: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    """Shard-layout latents [B, C, F, h, w]: all but the frame count must agree."""
    if target.shape[:2] != reference.shape[:2] or target.shape[3:] != reference.shape[3:]:
        raise DataError(f"{what}: reference latents {tuple(reference.shape)} do not match target latents "
                        f"{tuple(target.shape)} in batch, channels or resolution; encode both at one size")


class Family:
    """Base class; each family is one folder, e.g. `vap.training.families.cogvideox`."""

    name: str
    encoder: type  # its `vap.datasets.encode.ClipEncoder` subclass (the shard columns; inverse of `decode`)
    generation: GenerationDefaults  # the authors' guidance and resolution for the family
    max_references: int | None = 1  # references one sample may carry (None: any number)
    transformer_class: str  # diffusers class name in transformer/config.json
    frame_axis: int  # the time axis of the transformer's latent input (CogVideoX 1, Wan 2)
    channel_axis: int
    embedder_names: tuple[str, ...]  # backbone modules the expert gets its own copy of
    blocks_attr: str  # the backbone's ModuleList of blocks

    def transformer_cls(self):
        import diffusers

        return getattr(diffusers, self.transformer_class)

    def blocks(self, backbone) -> torch.nn.ModuleList:
        return getattr(backbone, self.blocks_attr)

    def num_layers(self, config) -> int:
        return int(config["num_layers"])

    def default_blocks(self, num_layers: int) -> list[int]:
        raise NotImplementedError

    def check_config(self, config) -> None:
        """Raise ModelError for variants of the family this code does not handle."""

    def signature(self, config) -> dict:
        """What an expert must match in a backbone to be attachable to it."""
        return {k: v for k, v in dict(config).items() if not k.startswith("_")}

    def direct_params(self, backbone, expert_blocks) -> list[torch.nn.Parameter]:
        """Parameters read outside their own module's forward (ZeRO-3 must gather them)."""
        return []

    # --- the forward, piece by piece -------------------------------------------------------
    def check_text(self, config, text: torch.Tensor) -> None:
        """Raise ModelError if caption embeddings cannot work with this backbone."""

    def check_references(self, config, m: int, reference_text: torch.Tensor) -> None:
        """Raise ModelError unless `m` references (laid along time) with these captions can be used."""
        if self.max_references is not None and m > self.max_references:
            raise ModelError(f"{m} references given, but a {self.name} expert takes {self.max_references} "
                             "reference video (the authors' model supports one); give one reference")

    def target_positions(self, config, video_shape) -> Any:
        raise NotImplementedError

    def rope(self, config, positions) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def embed(self, mods, video, text, timestep, image_embeds, rope) -> Stream:
        raise NotImplementedError

    def block(self, block, stream: Stream) -> Stream:
        raise NotImplementedError

    def qkv(self, block, stream: Stream):
        """(q, k, v as [B, heads, L, d] with RoPE applied, what `finish` needs) for one stream."""
        raise NotImplementedError

    def finish(self, block, stream: Stream, attn_out: torch.Tensor, saved) -> Stream:
        """The rest of the block after attention (output projection, gates, feed-forward, …)."""
        raise NotImplementedError

    def joint_block(self, block, expert_block, target: Stream, reference: Stream | None, mode: str,
                    cached_kv=None, reference_needed: bool = True) -> tuple[Stream, Stream | None, tuple]:
        """One backbone block and its expert copy: each stream its own Q/K/V and everything else,
        one attention between them (`vap.training.attention.attend`). `cached_kv` replaces the
        reference stream; `reference_needed=False` (last expert block: nothing reads the
        reference afterwards) skips its output. Returns (target, reference, reference (k, v))."""
        from vap.training.attention import attend

        q_t, k_t, v_t, saved_t = self.qkv(block, target)
        q_r = k_r = v_r = saved_r = None
        if cached_kv is not None:
            k_r, v_r = cached_kv
        elif reference is not None:
            q_r, k_r, v_r, saved_r = self.qkv(expert_block, reference)
            q_r = q_r if reference_needed else None
        out_t, out_r = attend(q_t, k_t, v_t, q_r, k_r, v_r, mode)
        target = self.finish(block, target, out_t, saved_t)
        if out_r is not None:
            reference = self.finish(expert_block, reference, out_r, saved_r)
        return target, reference, (k_r, v_r)

    def head(self, backbone, stream: Stream, video_shape) -> torch.Tensor:
        raise NotImplementedError

    def reference_timestep(self, timestep: torch.Tensor, mode: str) -> torch.Tensor:
        """The expert's timestep: a fixed clean t (0) in one_way mode, else the family's rule."""
        return torch.zeros_like(timestep)

    # --- training and generation -----------------------------------------------------------
    def training_inputs(self, batch: dict, config, device, dtype) -> TrainingInputs:
        raise NotImplementedError

    def decode(self, vae, latents: torch.Tensor) -> torch.Tensor:
        """Denoised latents (native layout) → video [B, C, F, H, W] in [-1, 1]."""
        raise NotImplementedError

    def objective(self, backbone: str):
        """The family's loss, reading the backbone's scheduler/ config (path, hub id or URI)."""
        raise NotImplementedError

    def build_tiny(self):
        """A tiny random diffusers I2V pipeline of the family (`vap.training.tiny.make_tiny_backbone`)."""
        raise NotImplementedError
