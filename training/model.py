"""The VAP transformer: a frozen diffusers video DiT plus a trainable Mixture-of-Transformers expert.

The expert holds, for a chosen set of blocks, a full copy of the backbone block, plus its own
patch, timestep and text (Wan: and CLIP image) embedders. It carries the reference stream
`[reference caption, reference video]`; in an expert block both streams compute Q/K/V with their
own weights and meet in one attention (see `vap.training.attention`); elsewhere the reference
stream passes through unchanged. Only the target is predicted (no expert output head). The
expert starts as a clone of the backbone's weights and is the only trainable part.

`VAPExpert` is its own diffusers model, so `save_expert` writes it alone in the
`save_pretrained` layout and `load_expert` attaches it to a backbone loaded separately.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from vap.errors import ModelError
from vap.training.attention import MODES, ReferenceCache
from vap.training.families import get_family
from vap.training.families.base import MODEL_FILES, Family, resolve_backbone
from vap.training.rope import reference_positions

log = logging.getLogger(__name__)

EXPERT_WEIGHTS = "diffusion_pytorch_model.safetensors"


def plain_config(config) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")}


def resolve_blocks(blocks, family: Family, num_layers: int) -> list[int]:
    if blocks == "default":
        chosen = family.default_blocks(num_layers)
    elif blocks == "all":
        chosen = list(range(num_layers))
    else:
        chosen = sorted(set(int(b) for b in blocks))
    bad = [b for b in chosen if not 0 <= b < num_layers]
    if bad:
        raise ModelError(f"expert.blocks {bad} out of range: this {family.name} backbone has {num_layers} "
                         f"blocks (0..{num_layers - 1}); pick blocks inside it")
    return chosen


def _empty_backbone(family: Family, backbone_config: dict):
    """The backbone's module tree without parameter storage (buffers are real): cheap even at 14B."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return family.transformer_cls().from_config(backbone_config)


class VAPExpert(ModelMixin, ConfigMixin):
    """The trainable expert: per-block copies and its own embedders, keyed like the backbone
    (`blocks.<i>.…`, `embed.<name>.…`). Built empty from the backbone's config; `from_backbone`
    clones the backbone's weights into it."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, family: str, backbone_config: dict, block_ids: list[int], backbone: str = "",
                 reference_attention: str = "joint", rope_delta: float | None = None):
        super().__init__()
        fam = get_family(family)
        skeleton = _empty_backbone(fam, backbone_config)
        self.embed = nn.ModuleDict({name: getattr(skeleton, name) for name in fam.embedder_names})
        layers = fam.blocks(skeleton)
        self.blocks = nn.ModuleDict({str(i): layers[i] for i in block_ids})

    @classmethod
    def from_backbone(cls, family: Family, module: nn.Module, blocks: list[int], **settings) -> VAPExpert:
        """`settings` (backbone id, reference_attention, rope_delta) are recorded in config.json so
        generation can rebuild the model the expert was trained in."""
        expert = cls(family.name, plain_config(module.config), blocks, **settings)
        state = {}
        for name in family.embedder_names:
            state.update({f"embed.{name}.{k}": v for k, v in getattr(module, name).state_dict().items()})
        layers = family.blocks(module)
        for i in blocks:
            state.update({f"blocks.{i}.{k}": v for k, v in layers[i].state_dict().items()})
        # clone: an expert sharing storage with the frozen backbone would train the backbone too
        expert.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True, assign=True)
        return expert


class VAPTransformer(ModelMixin, ConfigMixin):
    """Frozen backbone + expert. Build it with `from_backbone` (a path, hub id or URI of a
    diffusers repo) or from a config (random backbone, for tests and `vap model info`).

    forward(hidden_states, timestep, encoder_hidden_states, reference_hidden_states=None, ...)
    takes latents in the backbone's own layout; the reference is its clean latents in the same
    I2V channel format (several references: concatenated along time). Without a reference it
    is exactly the backbone."""

    ignore_for_config = ["backbone"]
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, family: str, backbone_config: dict, expert_blocks: list[int],
                 reference_attention: str = "joint", rope_delta: float | None = None, backbone_id: str = "",
                 backbone: nn.Module | None = None):
        super().__init__()
        fam = get_family(family)
        fam.check_config(backbone_config)
        if reference_attention not in MODES:
            raise ModelError(f"reference_attention {reference_attention!r}: choose one of {list(MODES)}")
        if backbone is None:
            backbone = fam.transformer_cls().from_config(backbone_config)
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        self.expert = VAPExpert.from_backbone(fam, backbone, list(expert_blocks), backbone=backbone_id,
                                              reference_attention=reference_attention, rope_delta=rope_delta)
        self.expert.requires_grad_(True)
        self.family = fam
        self.gradient_checkpointing = False
        self._register_direct_params()

    def _register_direct_params(self) -> None:
        params = self.family.direct_params(self.backbone, self.expert.blocks)
        if not params:
            return
        try:
            import deepspeed  # `deepspeed.zero` is an attribute, not an importable module
        except ImportError:  # no DeepSpeed, no ZeRO-3 partitioning to coordinate
            return
        for p in params:
            deepspeed.zero.register_external_parameter(self, p)

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_backbone(cls, backbone: str, family: str, blocks="default", reference_attention: str = "joint",
                      rope_delta: float | None = None, torch_dtype: torch.dtype = torch.float32) -> VAPTransformer:
        fam = get_family(family)
        source = resolve_backbone(backbone, MODEL_FILES)
        check_backbone_family(source, fam)
        model = fam.transformer_cls().from_pretrained(source, subfolder="transformer", torch_dtype=torch_dtype)
        chosen = resolve_blocks(blocks, fam, fam.num_layers(model.config))
        log.info("VAP %s: backbone %s, expert on %d of %d blocks", fam.name, backbone, len(chosen),
                 fam.num_layers(model.config))
        return cls(fam.name, plain_config(model.config), chosen, reference_attention, rope_delta, backbone,
                   backbone=model)

    @property
    def dtype(self) -> torch.dtype:
        # the backbone's compute dtype (diffusers skips its float32-kept modules, e.g. Wan's norms)
        return self.backbone.dtype

    # --- the expert alone --------------------------------------------------------------------
    def expert_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.expert.parameters() if p.requires_grad)

    def save_expert(self, directory: str | Path) -> Path:
        """Write the expert alone (config.json + safetensors, diffusers save_pretrained layout)."""
        self.expert.save_pretrained(directory, safe_serialization=True)
        return Path(directory)

    def load_expert(self, directory: str | Path) -> None:
        """Load an expert saved by `save_expert` into this model; ModelError if it does not fit."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / "config.json").exists() or not (directory / EXPERT_WEIGHTS).exists():
            raise ModelError(f"{directory}: not an expert folder (needs config.json and {EXPERT_WEIGHTS}); "
                             "give the folder written by save_expert")
        saved = VAPExpert.load_config(directory)
        check_expert_fits(saved, self.expert.config, str(directory))
        for key in ("reference_attention", "rope_delta"):
            if saved.get(key, self.expert.config[key]) != self.expert.config[key]:
                log.warning("%s: expert trained with %s=%r, used with %r", directory, key, saved.get(key),
                            self.expert.config[key])
        state = load_file(directory / EXPERT_WEIGHTS)
        missing, unexpected = self.expert.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelError(f"{directory}: expert weights do not fit this model (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}); it was saved from another expert layout")

    # --- forward -----------------------------------------------------------------------------
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        reference_hidden_states: torch.Tensor | None = None,
        reference_encoder_hidden_states: torch.Tensor | None = None,
        encoder_hidden_states_image: torch.Tensor | None = None,
        reference_encoder_hidden_states_image: torch.Tensor | None = None,
        reference_timestep: torch.Tensor | None = None,
        reference_cache: ReferenceCache | None = None,
        return_dict: bool = True,
    ):
        fam, cfg, mode = self.family, self.config.backbone_config, self.config.reference_attention
        timestep = torch.as_tensor(timestep, device=hidden_states.device).reshape(-1)
        timestep = timestep.expand(hidden_states.shape[0]) if timestep.numel() == 1 else timestep
        fam.check_text(cfg, encoder_hidden_states)
        target_pos = fam.target_positions(cfg, hidden_states.shape)
        target = fam.embed(self.backbone, hidden_states, encoder_hidden_states, timestep,
                           encoder_hidden_states_image, self._rope(target_pos, hidden_states))

        use_cache = reference_cache is not None and reference_cache.filled
        reference = None
        if reference_hidden_states is not None and not use_cache:
            self._check_reference(hidden_states, reference_hidden_states, reference_encoder_hidden_states)
            m = reference_hidden_states.shape[fam.frame_axis] // hidden_states.shape[fam.frame_axis]
            ref_pos = reference_positions(target_pos, m, self.config.rope_delta)
            ref_t = fam.reference_timestep(timestep, mode) if reference_timestep is None else \
                torch.as_tensor(reference_timestep, device=timestep.device).reshape(-1).expand_as(timestep)
            reference = fam.embed(self.expert.embed, reference_hidden_states, reference_encoder_hidden_states,
                                  ref_t, reference_encoder_hidden_states_image,
                                  self._rope(ref_pos, reference_hidden_states))
        if reference_cache is not None:
            self._check_cache(reference_cache, hidden_states.shape[0], reference is not None)

        has_reference = reference is not None or use_cache
        last_expert = max((int(k) for k in self.expert.blocks), default=-1)
        for i, block in enumerate(fam.blocks(self.backbone)):
            key = str(i)
            if not has_reference or key not in self.expert.blocks:
                target = self._run(fam.block, block, target)
                continue
            cached = reference_cache.kv[i] if use_cache else None
            target, reference, kv = self._run(fam.joint_block, block, self.expert.blocks[key], target, reference,
                                              mode, cached, i != last_expert)
            if reference_cache is not None and not use_cache:
                reference_cache.kv[i] = (kv[0].detach(), kv[1].detach())
        if reference_cache is not None and not use_cache:
            reference_cache.filled = True

        out = fam.head(self.backbone, target, hidden_states.shape)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    def _rope(self, positions, like: torch.Tensor):
        cos, sin = self.family.rope(self.config.backbone_config, positions)
        return cos.to(like.device), sin.to(like.device)

    def _run(self, fn, *args):
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(fn, *args)
        return fn(*args)

    def _check_reference(self, target, reference, reference_text) -> None:
        fam = self.family
        if reference_text is None:
            raise ModelError("a reference video needs its caption embedding (reference_encoder_hidden_states)")
        ft, fr = target.shape[fam.frame_axis], reference.shape[fam.frame_axis]
        others_t = [s for a, s in enumerate(target.shape) if a != fam.frame_axis]
        others_r = [s for a, s in enumerate(reference.shape) if a != fam.frame_axis]
        if others_t != others_r:
            raise ModelError(f"reference latents {tuple(reference.shape)} do not match target latents "
                             f"{tuple(target.shape)} (batch, channels, height, width must agree); "
                             "resize the reference video to the target's resolution")
        if fr % ft:
            raise ModelError(f"reference has {fr} latent frames but the target has {ft}: each reference must "
                             f"have the target's frame count (several references: a multiple of {ft})")
        fam.check_references(self.config.backbone_config, fr // ft, reference_text)
        fam.check_text(self.config.backbone_config, reference_text)

    def _check_cache(self, cache: ReferenceCache, batch: int, computing: bool) -> None:
        if self.config.reference_attention != "one_way":
            raise ModelError("a reference cache needs reference_attention='one_way' (in 'joint' the reference "
                             "attends to the noisy target and changes every step)")
        if cache.batch_size is None:
            cache.batch_size = batch
        elif cache.batch_size != batch:
            raise ModelError(f"reference cache was filled for batch {cache.batch_size}, called with {batch}; "
                             "use one cache per generation")
        if not cache.filled and not computing:
            raise ModelError("an empty reference cache needs the reference inputs on the first call")


def check_backbone_family(source: str, family: Family) -> None:
    """Refuse a backbone whose transformer is of another family, naming both."""
    try:
        config = family.transformer_cls().load_config(source, subfolder="transformer")
    except (OSError, ValueError) as err:
        raise ModelError(f"backbone {source!r}: cannot read transformer/config.json ({err}); give a diffusers "
                         "model folder, hub id or URI with a transformer/ subfolder") from None
    found = config.get("_class_name")
    if found != family.transformer_class:
        raise ModelError(f"backbone {source!r} holds a {found} but the spec says family '{family.name}' "
                         f"({family.transformer_class}); fix model.family or model.backbone")


def check_expert_fits(saved, current, where: str) -> None:
    fam_s, fam_c = saved["family"], current["family"]
    if fam_s != fam_c:
        raise ModelError(f"expert {where} was trained for a {fam_s} backbone, this model's backbone is {fam_c}; "
                         "load it onto a backbone of its own family")
    sig = get_family(fam_c).signature
    a, b = sig(saved["backbone_config"]), sig(current["backbone_config"])
    diff = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    if diff:
        shown = ", ".join(f"{k}: expert {x!r} vs backbone {y!r}" for k, (x, y) in list(diff.items())[:4])
        raise ModelError(f"expert {where} was trained on another {fam_c} backbone ({shown}); "
                         "load it onto the backbone it was trained with")
    if list(saved["block_ids"]) != list(current["block_ids"]):
        raise ModelError(f"expert {where} covers blocks {list(saved['block_ids'])}, this model's expert covers "
                         f"{list(current['block_ids'])}; build the model with expert.blocks matching the checkpoint")


def load_vap(model_spec) -> VAPTransformer:
    """The trainer's entry point: frozen backbone + expert cloned from it, fp32, on the CPU."""
    e = model_spec.expert
    return VAPTransformer.from_backbone(model_spec.backbone, model_spec.family, blocks=e.blocks,
                                        reference_attention=e.reference_attention, rope_delta=e.rope_delta)

