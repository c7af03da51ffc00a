"""`vap plan`: will a VAP job fit on its GPUs, how long is a step, what do 1,000 steps cost?

Everything is computed from the backbone's transformer config (built on the meta device, no
weights) and the job's shape; nothing is allocated. The model behind each figure:

- **Model states per GPU** (DeepSpeed ZeRO): the frozen backbone is stored once in the compute
  dtype and never gets gradients or optimizer state; the expert (trainable) carries its
  parameters, fp32 gradient partitions and AdamW state with its fp32 master copy. Bytes per
  parameter, as DeepSpeed's own estimator counts them for bf16 (2 + 4 + 12 = 18) and as ZeRO-3
  allocates them in fp32 (measured on CPU: the master is a copy there too, 4 + 4 + 12):

      precision  frozen  trainable params  gradients  optimizer (master + m + v)
      bf16         2            2              4         12
      fp32         4            4              4         12

  Stage 3 partitions parameters, stage ≥ 2 gradients, stage ≥ 1 optimizer state over the GPUs.
  Gathering one module's parameters (ZeRO-3 gathers per module around its forward) costs its
  parameters and their gradients in the compute dtype: the *largest gathered layer*.
- **Activations** are the tensors autograd keeps for the backward pass, per token and block,
  counted from the blocks' operations (units of the hidden size h and the feed-forward size f,
  see `ACTIVATIONS`). Only blocks at or after the first expert block keep any: before it
  nothing needs a gradient. With activation checkpointing each block keeps its inputs and one
  block's activations exist again while it is recomputed.
- **Step time** from FLOPs: linear layers 2 × parameters × tokens, attention 4 × queries × keys
  × h; frozen blocks run forward plus the input-gradient backward (≈ 2 × forward), expert blocks
  forward plus the full backward (≈ 3 × forward); checkpointing adds one forward of each block.
  Divided by the GPU's peak at a stated model FLOPs utilisation (MFU).

`tests/test_plan.py` checks the model-state figure against DeepSpeed's estimator (everything
trainable), the frozen-aware bytes against what ZeRO-3 allocates on 2 CPU ranks, and the
activation figure against the tensors autograd actually saves for a small configuration.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from vap.errors import SpecError

GIB = 1024**3
BYTES = {"bf16": 2, "fp32": 4}
# (frozen, trainable params, gradients, optimizer) bytes per parameter — see the module doc.
STATE_BYTES = {"bf16": (2, 2, 4, 12), "fp32": (4, 4, 4, 12)}
# Saved-for-backward elements per token of one block and stream, as (a, b, c): a·h + b·f per
# stream token plus c·h per context token (Wan's cross-attention keys/values of text and image).
# Counted from the blocks' operations (h hidden size, f feed-forward size):
#  frozen   the backbone stream of a block after the first expert block — input gradients only,
#           so frozen linears keep no inputs: LayerNorm inputs 2h, q/k before their norms 2h,
#           attention q, k, v, out 4h, GELU input f (CogVideoX 8h + f; Wan adds the
#           cross-attention's q norm and outputs and a third norm: 13h + f, context k, v 2h).
#  first    the backbone stream of the first expert block: nothing before its attention needs a
#           gradient (its queries do not depend on the expert), so only attention and after.
#  expert   a trained expert stream: the above plus every linear's input (q/k/v shared, out
#           projection, both feed-forward linears), the modulated norms, the gated residual
#           branches (CogVideoX 15h + 2f; Wan 25h + 2f, context k before/after its norm, v: 5h).
#  last     the last expert block's stream, which only provides keys and values (nobody reads
#           its output): its norm, modulation and k/v projections.
# tests/test_plan.py compares the sum with the tensors autograd really saves.
ACTIVATIONS = {
    "cogvideox": {"frozen": (8, 1, 0), "first": (5, 1, 0), "expert": (15, 2, 0), "last": (10, 0, 0)},
    "wan": {"frozen": (13, 1, 2), "first": (9, 1, 2), "expert": (25, 2, 5), "last": (11, 0, 2)},
}
# DeepSpeed ZeRO-3 buffers the trainer's config leaves at their defaults (elements).
DS_BUFFERS = {"reduce_bucket_size": 500_000_000, "stage3_prefetch_bucket_size": 50_000_000}
RUNTIME_RESERVE = 1.0 * GIB  # CUDA context, NCCL and allocator slack that no tensor accounts for
HEADROOM = 0.95  # keep 5 % free for fragmentation: a plan using more "does not fit"


@dataclass(frozen=True)
class Geometry:
    """How a family turns pixels into tokens."""

    vae_spatial: int = 8
    vae_temporal: int = 4
    text_in_sequence: bool = True  # CogVideoX: text joins the self-attention sequence
    text_tokens: int = 226
    image_tokens: int = 0  # Wan I2V: CLIP image tokens, cross-attention only


GEOMETRY = {"cogvideox": Geometry(), "wan": Geometry(text_in_sequence=False, text_tokens=512, image_tokens=257)}


@dataclass(frozen=True)
class Setup:
    """A job's shape. `backbone`: a shipped config name (`vap model info`), a backbone path / hub
    id with transformer/config.json, or a transformer config.json."""

    backbone: str = "cogvideox-5b-i2v"
    blocks: str | list[int] = "default"
    gpus: int = 8
    gpu_memory_gib: float = 80.0
    frames: int = 49
    height: int = 480
    width: int = 720
    batch: int = 1  # per GPU
    references: int = 1
    zero_stage: int = 3
    offload_optimizer: bool = False
    offload_params: bool = False
    partition_frozen: bool = True  # ZeRO-3 partitions the frozen backbone too (the trainer's GPU default)
    activation_checkpointing: bool = False
    precision: str = "bf16"
    mfu: float = 0.35
    peak_tflops: float = 989.0  # H100 SXM dense bf16
    # latent grid and CLIP image tokens directly (override frames/height/width and Wan's 257;
    # for small checks with other VAEs and image encoders)
    latent: tuple[int, int, int] | None = None
    image_tokens: int | None = None


@dataclass
class Plan:
    setup: dict
    family: str
    tokens: dict
    params: dict
    memory_gib: dict
    total_gib: float
    fits: bool
    suggestion: str
    flops_per_step: float
    step_seconds: float
    gpu_hours_per_1000_steps: float
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def table(self) -> str:
        s = self.setup
        lines = [f"vap plan — {s['backbone']} ({self.family}), expert {self.params['expert_blocks']} of "
                 f"{self.params['num_layers']} blocks, {s['gpus']} GPUs × {s['gpu_memory_gib']:g} GiB, "
                 f"{s['frames']} frames {s['height']}×{s['width']}, batch {s['batch']}/GPU, ZeRO-{s['zero_stage']}, "
                 f"{s['precision']}" + (", activation checkpointing" if s["activation_checkpointing"] else "")
                 + (", optimizer offload" if s["offload_optimizer"] else "") + (", param offload" if s["offload_params"] else "")
                 + ("" if s["partition_frozen"] or s["zero_stage"] != 3 else ", backbone whole on every GPU"),
                 f"  tokens per stream: {self.tokens['target']:,} target, {self.tokens['reference']:,} reference "
                 f"(joint attention over {self.tokens['joint']:,})",
                 f"  parameters: backbone {self.params['frozen'] / 1e9:.3f}B frozen, expert {self.params['trainable'] / 1e9:.3f}B trainable",
                 "", f"  {'per GPU':<34}{'GiB':>10}"]
        lines += [f"  {k:<34}{v:>10.2f}" for k, v in self.memory_gib.items()]
        lines += [f"  {'total':<34}{self.total_gib:>10.2f}   of {s['gpu_memory_gib'] * HEADROOM:.1f} usable "
                  f"→ {'FITS' if self.fits else 'DOES NOT FIT'}"]
        if self.suggestion:
            lines.append(f"  {self.suggestion}")
        lines += ["", f"  step: {self.flops_per_step / 1e15:.1f} PFLOP per GPU → {self.step_seconds:.2f} s at "
                  f"{s['mfu']:.0%} MFU of {s['peak_tflops']:g} TFLOP/s; 1,000 steps = "
                  f"{self.gpu_hours_per_1000_steps:,.1f} GPU-hours"]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# --- the model's structure ------------------------------------------------------------------
@dataclass(frozen=True)
class Structure:
    family: str
    config: dict
    num_layers: int
    expert_blocks: list[int]
    hidden: int
    ffn: int
    heads: int
    patch: tuple[int, int, int]  # t, h, w
    frozen_params: int
    trainable_params: int
    largest_layer: int  # the most parameters one module holds directly (ZeRO-3 gathers per module)
    block_linear: dict  # per-token-kind linear parameters of one block: {"stream": n, "text": n, "image": n, "sample": n}
    block_params: int


def _config(backbone: str) -> tuple[str, dict]:
    from vap.training.families import family_of_transformer, resolve_backbone
    from vap.training.info import shipped

    configs = shipped()
    if backbone in configs:
        c = configs[backbone]
        return c["family"], c["transformer"]
    for c in configs.values():  # a hub id of a shipped backbone: no download needed
        if c["backbone"] == backbone:
            return c["family"], c["transformer"]
    path = Path(backbone)
    if path.suffix == ".json" and path.is_file():
        config = json.loads(path.read_text())
    else:
        local = Path(resolve_backbone(backbone, ["transformer/config.json"]))
        if not (local / "transformer" / "config.json").exists():
            raise SpecError(f"backbone {backbone!r}: not a shipped config ({', '.join(configs)}), a "
                            "transformer config.json, nor a backbone with transformer/config.json")
        config = json.loads((local / "transformer" / "config.json").read_text())
    fam = family_of_transformer(config.get("_class_name", ""))
    if fam is None:
        raise SpecError(f"backbone {backbone!r}: its transformer is a {config.get('_class_name')!r}, "
                        "not a CogVideoX or Wan one")
    return fam.name, config


def _token_kind(family: str, name: str) -> str:
    """Which tokens a block's linear layer is applied to."""
    if ".norm" in f".{name}" and "linear" in name:  # adaptive-norm modulation: once per sample
        return "sample"
    if family == "wan" and (name.startswith("attn2.to_k") or name.startswith("attn2.to_v")):
        return "text"
    if family == "wan" and "add_" in name:
        return "image"
    return "stream"


def structure(backbone: str, blocks="default") -> Structure:
    return _structure(backbone, blocks if isinstance(blocks, str) else tuple(blocks))


@functools.lru_cache(maxsize=16)  # building a 14B model's meta skeleton takes seconds
def _structure(backbone: str, blocks) -> Structure:
    import torch.nn as nn

    from vap.training.families import get_family
    from vap.training.model import VAPExpert, _empty_backbone, plain_config, resolve_blocks

    family, raw = _config(backbone)
    fam = get_family(family)
    config = plain_config(raw)
    fam.check_config(config)
    model = _empty_backbone(fam, config)
    num_layers = fam.num_layers(config)
    chosen = resolve_blocks(blocks if isinstance(blocks, str) else list(blocks), fam, num_layers)
    expert = VAPExpert(fam.name, config, chosen)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False))
                  for part in (model, expert) for m in part.modules())
    block = fam.blocks(model)[0]
    kinds = {"stream": 0, "text": 0, "image": 0, "sample": 0}
    for name, m in block.named_modules():
        if isinstance(m, nn.Linear):
            kinds[_token_kind(family, name)] += m.weight.numel()
    if family == "cogvideox":
        hidden = config["num_attention_heads"] * config["attention_head_dim"]
        patch = (config.get("patch_size_t") or 1, config["patch_size"], config["patch_size"])
        ffn = 4 * hidden
    else:
        hidden = config["num_attention_heads"] * config["attention_head_dim"]
        patch = tuple(config["patch_size"])
        ffn = config["ffn_dim"]
    return Structure(family, config, num_layers, chosen, hidden, ffn, config["num_attention_heads"], patch,
                     sum(p.numel() for p in model.parameters()), sum(p.numel() for p in expert.parameters()),
                     largest, kinds, sum(p.numel() for p in block.parameters()))


# --- the plan ----------------------------------------------------------------------------------
def _check(setup: Setup, st: Structure) -> None:
    if setup.gpus < 1:
        raise SpecError(f"gpus = {setup.gpus}: a plan needs at least one GPU")
    if setup.batch < 1 or setup.references < 1:
        raise SpecError("batch and references must be at least 1")
    if not 0 < setup.mfu <= 1:
        raise SpecError(f"mfu = {setup.mfu}: give a fraction in (0, 1], e.g. 0.35")
    if setup.precision not in BYTES:
        raise SpecError(f"precision {setup.precision!r}: choose one of {list(BYTES)}")
    if setup.latent is None:
        g = GEOMETRY[st.family]
        step = g.vae_spatial * st.patch[1]
        for what, v in (("height", setup.height), ("width", setup.width)):
            if v % step:
                raise SpecError(f"{what} = {v}: must be a multiple of {step} (VAE ×{g.vae_spatial} × patch "
                                f"{st.patch[1]}); e.g. {max(step, v // step * step)}")
        if (setup.frames - 1) % g.vae_temporal:
            raise SpecError(f"frames = {setup.frames}: the {st.family} VAE needs {g.vae_temporal}k + 1 frames "
                            f"(e.g. {(setup.frames - 1) // g.vae_temporal * g.vae_temporal + 1})")


def tokens(setup: Setup, st: Structure) -> dict:
    g = GEOMETRY[st.family]
    if setup.latent is not None:
        f, h, w = setup.latent
    else:
        f, h, w = (setup.frames - 1) // g.vae_temporal + 1, setup.height // g.vae_spatial, setup.width // g.vae_spatial
    video = math.ceil(f / st.patch[0]) * (h // st.patch[1]) * (w // st.patch[2])
    text = st.config.get("max_text_seq_length", g.text_tokens) if g.text_in_sequence else g.text_tokens
    target = video + (text if g.text_in_sequence else 0)
    reference = setup.references * target
    image = g.image_tokens if setup.image_tokens is None else setup.image_tokens
    context = 0 if g.text_in_sequence else text + (image if st.config.get("added_kv_proj_dim") else 0)
    return {"video": video, "text": text, "context": context, "target": target, "reference": reference,
            "joint": target + reference}


def activation_bytes(setup: Setup, st: Structure, tok: dict | None = None) -> dict:
    """Bytes autograd keeps per GPU: {'blocks': …, 'checkpointed': …}."""
    tok = tok or tokens(setup, st)
    h, f, b = st.hidden, st.ffn, BYTES[setup.precision] * setup.batch
    coef = ACTIVATIONS[st.family]

    def per_block(kind: str, stream_tokens: int) -> int:
        a, c_f, c_ctx = coef[kind]
        return (a * h + c_f * f) * stream_tokens + c_ctx * h * tok["context"] * (stream_tokens > 0)

    experts = st.expert_blocks
    first = min(experts) if experts else st.num_layers
    last = max(experts, default=-1)
    saving = range(first, st.num_layers)  # earlier blocks need no gradient at all
    full = [per_block("first" if i == first else "frozen", tok["target"])
            + (per_block("last" if i == last else "expert", tok["reference"]) if i in experts else 0)
            for i in saving]
    inputs = [h * (tok["target"] + (tok["reference"] if i in experts else 0)) for i in saving]
    return {"full": b * sum(full), "checkpointed": b * (sum(inputs) + max(full, default=0))}


def model_state_bytes(setup: Setup, frozen: int, trainable: int, largest: int) -> dict:
    n = setup.gpus
    fz, tp, gr, op = STATE_BYTES[setup.precision]
    stage = setup.zero_stage
    params_shard = n if stage == 3 else 1
    on_gpu_params = 0 if setup.offload_params else 1
    out = {
        "frozen parameters": on_gpu_params * fz * frozen / (params_shard if setup.partition_frozen else 1),
        "trainable parameters": on_gpu_params * tp * trainable / params_shard,
        "gradients": gr * trainable / (n if stage >= 2 else 1),
        "optimizer state": (0 if setup.offload_optimizer else 1) * op * trainable / (n if stage >= 1 else 1),
    }
    if stage == 3:
        out["largest gathered layer"] = 2 * BYTES[setup.precision] * largest
    return out


def flops_per_sample(setup: Setup, st: Structure, tok: dict) -> float:
    """Training FLOPs of one sample (forward + backward)."""
    lin = st.block_linear
    h = st.hidden

    def linear(stream_tokens: int) -> float:
        return 2 * (lin["stream"] * stream_tokens + lin["text"] * tok["text"] * (tok["context"] > 0)
                    + lin["image"] * max(tok["context"] - tok["text"], 0) + lin["sample"])

    def cross(stream_tokens: int) -> float:
        return 4 * stream_tokens * tok["context"] * h

    total = 0.0
    first = min(st.expert_blocks) if st.expert_blocks else st.num_layers
    recompute = 1 if setup.activation_checkpointing else 0
    for i in range(st.num_layers):
        if i in st.expert_blocks:
            joint = 4 * tok["joint"] ** 2 * h
            fwd_t = linear(tok["target"]) + cross(tok["video"])
            fwd_r = linear(tok["reference"]) + cross(tok["reference"] - (tok["target"] - tok["video"]))
            # target stream: frozen (input gradients, 1×); reference stream: trained (2×); the joint
            # attention needs gradients of q, k and v (2×)
            total += (1 + recompute) * (fwd_t + fwd_r + joint) + fwd_t + 2 * fwd_r + 2 * joint
        else:
            lin_f = linear(tok["target"])
            att_f = 4 * tok["target"] ** 2 * h + cross(tok["video"])
            backward = 1 if i >= first else 0  # before the first expert block nothing needs a gradient
            # frozen: input gradients only — linears 1× forward, attention 2× (dq, dk, dv)
            total += (1 + recompute * backward) * (lin_f + att_f) + backward * (lin_f + 2 * att_f)
    return total


def inference_ratios(setup: Setup, st: Structure | None = None) -> dict:
    """Per denoising step FLOPs ÷ the backbone alone, for each attention mode (guidance branches
    scale both alike). `one_way_cache`: the reference stream runs once per generation, so a
    step only pays the target's attention over the cached reference keys and values."""
    st = st or structure(setup.backbone, setup.blocks)
    tok = tokens(setup, st)
    h, lin = st.hidden, st.block_linear

    def linear(n):
        return 2 * (lin["stream"] * n + lin["sample"])

    backbone = st.num_layers * (linear(tok["target"]) + 4 * tok["target"] ** 2 * h)
    e = len(st.expert_blocks)
    joint = backbone + e * (linear(tok["reference"]) + 4 * (tok["joint"] ** 2 - tok["target"] ** 2) * h)
    one_way = backbone + e * (linear(tok["reference"]) + 4 * (tok["target"] * tok["reference"]
                                                               + tok["reference"] ** 2) * h)
    cached = backbone + e * 4 * tok["target"] * tok["reference"] * h
    return {"joint": joint / backbone, "one_way": one_way / backbone, "one_way_cache": cached / backbone,
            "tokens": tok["joint"], "attention_share_backbone": st.num_layers * 4 * tok["target"] ** 2 * h / backbone}


def plan(setup: Setup) -> Plan:
    st = structure(setup.backbone, setup.blocks)
    _check(setup, st)
    tok = tokens(setup, st)
    mem = model_state_bytes(setup, st.frozen_params, st.trainable_params, st.largest_layer)
    act = activation_bytes(setup, st, tok)
    mem["activations" + (" (checkpointed)" if setup.activation_checkpointing else "")] = \
        act["checkpointed" if setup.activation_checkpointing else "full"]
    if setup.zero_stage == 3:
        mem["ZeRO buffers (defaults)"] = BYTES[setup.precision] * sum(DS_BUFFERS.values())
    mem["runtime reserve"] = RUNTIME_RESERVE
    total = sum(mem.values())
    fits = total <= setup.gpu_memory_gib * GIB * HEADROOM
    flops = flops_per_sample(setup, st, tok) * setup.batch
    seconds = flops / (setup.peak_tflops * 1e12 * setup.mfu)
    notes = [f"activations without checkpointing {act['full'] / GIB:.1f} GiB, with {act['checkpointed'] / GIB:.1f} GiB",
             "attention is assumed memory-efficient (flash / SDPA): no queries × keys matrix is kept"]
    if st.family == "wan" and setup.precision == "bf16":
        notes.append("Wan keeps its norms in fp32: their saved inputs take twice the bytes counted here")
    return Plan(setup=asdict(setup), family=st.family, tokens=tok,
                params={"frozen": st.frozen_params, "trainable": st.trainable_params, "largest_layer": st.largest_layer,
                        "num_layers": st.num_layers, "expert_blocks": len(st.expert_blocks)},
                memory_gib={k: v / GIB for k, v in mem.items()}, total_gib=total / GIB, fits=fits,
                suggestion="" if fits else cheapest_fix(setup),
                flops_per_step=flops, step_seconds=seconds,
                gpu_hours_per_1000_steps=seconds * 1000 * setup.gpus / 3600, notes=notes)


# Changes in the order a user would try them: free first, then slower, then more hardware.
FIXES = (
    ("turn on activation checkpointing (trainer.activation_checkpointing: true)", dict(activation_checkpointing=True)),
    ("offload the optimizer state to CPU", dict(offload_optimizer=True)),
    ("offload the frozen parameters to CPU too", dict(offload_params=True)),
)


def cheapest_fix(setup: Setup) -> str:
    current = setup
    done = []
    for text, change in FIXES:
        if all(getattr(current, k) == v for k, v in change.items()):
            continue
        current = replace(current, **change)
        done.append(text)
        if plan(current).fits:
            return "cheapest change that fits: " + "; then ".join(done)
    for gpus in (setup.gpus * 2, setup.gpus * 4, setup.gpus * 8):
        if plan(replace(current, gpus=gpus)).fits:
            return "cheapest change that fits: " + "; then ".join(done + [f"use {gpus} GPUs"])
    if current.batch > 1:
        return "does not fit even with every offload and 8× the GPUs: lower batch, frames or resolution"
    return "does not fit even with every offload and 8× the GPUs: lower frames or resolution"


def setup_from_spec(spec, **overrides) -> Setup:
    """A Setup from a job spec (`JobSpec`): its backbone, blocks, data shape and trainer."""
    from vap.training.zero import partitions_frozen  # the trainer's rule, in one place

    t, d = spec.trainer, spec.data
    base = dict(backbone=spec.model.backbone, blocks=spec.model.expert.blocks, gpus=t.workers, frames=d.frames,
                height=d.height, width=d.width, batch=t.batch_size, references=d.refs_per_target,
                zero_stage=t.zero_stage, activation_checkpointing=bool(getattr(t, "activation_checkpointing", False)),
                precision="bf16" if t.use_gpu else "fp32",  # the trainer's choice (bf16 on GPU)
                partition_frozen=partitions_frozen(spec))
    base.update({k: v for k, v in overrides.items() if v is not None})
    return Setup(**base)
