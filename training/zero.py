"""DeepSpeed in one place: the ZeRO config a job spec implies, process-group adoption, the
engine over the VAP model (frozen backbone outside the optimizer) and proofs that frozen
partitions never change."""

from __future__ import annotations

import hashlib
import resource
import sys

import torch

from vap.spec import JobSpec


def deepspeed_config(spec: JobSpec, world_size: int, universal: bool = False, zero_overrides: dict | None = None) -> dict:
    """`universal`: the engine will load a universal checkpoint (one of another world size);
    `zero_overrides`: keys of `zero_optimization` to replace (benchmarks compare settings)."""
    t = spec.trainer
    return {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum_steps,
        "train_batch_size": t.batch_size * world_size * t.grad_accum_steps,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": {
            "stage": t.zero_stage,
            "contiguous_gradients": True,
            # On CPU (tests, demo) tiny parameters must be partitioned too, or ZeRO-3 is not exercised.
            "stage3_param_persistence_threshold": 100_000 if t.use_gpu else 0,
            **(zero_overrides or {}),
        },
        "bf16": {"enabled": t.use_gpu},
        "checkpoint": {"load_universal": universal},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def init_distributed(use_gpu: bool) -> None:
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")  # adopts Ray's process group


def partitions_frozen(spec: JobSpec) -> bool:
    """Whether ZeRO-3 partitions the frozen backbone too: `trainer.partition_frozen`, unset →
    on GPU (at scale the backbone is most of a GPU's memory, and gathers overlap compute) but
    not on CPU (tests, demo: tiny modules, where ZeRO-3's per-module hooks cost more than the
    compute they wrap)."""
    t = spec.trainer
    return t.use_gpu if t.partition_frozen is None else t.partition_frozen


class TrainableOnly(torch.nn.Module):
    """What the DeepSpeed engine wraps when the frozen backbone stays out of ZeRO-3: the expert
    is its only submodule, so only the expert's parameters are partitioned and only its modules
    get ZeRO-3's fetch/release hooks, while `forward` runs the whole VAP model. ZeRO-3 has no
    per-module opt-out (it partitions every `module.parameters()`); diffusers' DeepSpeed scripts
    keep frozen models outside the engine in the same way. State-dict keys stay `expert.…`."""

    def __init__(self, model):
        super().__init__()
        self.expert = model.expert
        object.__setattr__(self, "vap", model)  # not a submodule: DeepSpeed never sees the backbone
        # parameters read outside their module's forward (Wan's modulation tables): the trainable
        # ones are gathered around this module's forward instead of the model's, which has no hooks
        import deepspeed  # `deepspeed.zero` is an attribute, not an importable module

        for p in model.family.direct_params(model.backbone, model.expert.blocks):
            if p.requires_grad:
                deepspeed.zero.register_external_parameter(self, p)

    # what the objective reads from `engine.module`
    config = property(lambda self: self.vap.config)
    device = property(lambda self: self.vap.device)
    dtype = property(lambda self: self.vap.dtype)

    def train(self, mode: bool = True):
        super().train(mode)
        self.vap.train(mode)  # the backbone too: it is not a child
        return self

    def forward(self, *args, **kwargs):
        return self.vap(*args, **kwargs)


def build_engine(model, spec: JobSpec, world_size: int, universal: bool = False, zero_overrides: dict | None = None):
    """(engine, lr scheduler): AdamW over the expert only, linear warmup, ZeRO per the spec;
    `universal` when it will restore a checkpoint written at another world size. Unless the
    backbone is partitioned too (`partitions_frozen`), the engine wraps `TrainableOnly(model)`:
    the backbone is held whole by every rank (in the compute dtype, on the rank's device) and
    never gathered."""
    import deepspeed

    t = spec.trainer
    module = model
    if t.zero_stage == 3 and not partitions_frozen(spec):
        from deepspeed.accelerator import get_accelerator

        model.backbone.to(get_accelerator().current_device_name() if t.use_gpu else "cpu",
                          torch.bfloat16 if t.use_gpu else None)  # as the engine casts the expert (bf16 on GPU)
        module = TrainableOnly(model)
    optimizer = torch.optim.AdamW(list(model.expert_parameters()), lr=t.lr, betas=tuple(t.adam_betas),
                                  weight_decay=t.weight_decay)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, t.warmup_steps)))
    engine, _, _, scheduler = deepspeed.initialize(model=module, optimizer=optimizer, lr_scheduler=warmup,
                                                   config=deepspeed_config(spec, world_size, universal, zero_overrides))
    return engine, scheduler


def to_universal(folder: str, out: str) -> None:
    """DeepSpeed's universal checkpoint of the ZeRO checkpoint in `folder` (one tag): every
    trainable parameter's fp32 weight and Adam moments whole, in `out`, so that an engine of any
    world size re-partitions them on load (`"checkpoint": {"load_universal": true}`)."""
    import argparse
    import contextlib
    import io

    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(input_folder=folder, output_folder=out, num_extract_workers=1, num_merge_workers=1,
                              keep_temp_folder=False, strict=True, inject_missing_state=False)
    with contextlib.redirect_stdout(io.StringIO()):  # its progress prints, one line per tensor
        ds_to_universal.main(args)


def partition_fingerprint(params) -> str:
    """sha256 over this rank's shard of `params` (ZeRO-3: `ds_tensor`), to prove they never change."""
    h = hashlib.sha256()
    for p in params:
        t = getattr(p, "ds_tensor", p).detach().cpu().contiguous()
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def peak_memory_mb() -> float:
    """This rank's peak memory: CUDA allocator peak on GPU, else the process's max RSS."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def per_rank(value: float, world_size: int, rank: int) -> list[float]:
    """Every rank's `value`, on every rank (collective)."""
    import torch.distributed as dist

    v = torch.zeros(world_size, dtype=torch.float64)
    v[rank] = value
    dist.all_reduce(v)
    return v.tolist()
