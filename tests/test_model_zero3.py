"""The VAP transformer under DeepSpeed ZeRO-3 (every parameter partitioned, gathered per module):
two optimizer steps train the expert and leave the frozen backbone bitwise unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

SCRIPT = r"""
import os, sys, warnings
warnings.filterwarnings("ignore")
import torch, deepspeed
sys.path.insert(0, {tests!r})
from test_model_helpers import shard_batch
from vap.training.families import get_family
from vap.training.model import VAPTransformer

family, path = {family!r}, {path!r}
model = VAPTransformer.from_backbone(path, family, blocks="all")
frozen = {{k: v.clone() for k, v in model.backbone.state_dict().items()}}
expert = {{k: v.clone() for k, v in model.expert.state_dict().items()}}
deepspeed.init_distributed(dist_backend="gloo")
config = {{"train_micro_batch_size_per_gpu": 2, "gradient_clipping": 1.0,
          # persistence threshold 0: partition even the tiny model's small tensors
          "zero_optimization": {{"stage": 3, "stage3_param_persistence_threshold": 0}}}}
engine, *_ = deepspeed.initialize(model=model, config=config,
                                  optimizer=torch.optim.AdamW(model.expert_parameters(), lr=1e-3))
objective = get_family(family).objective(path)
g = torch.Generator().manual_seed(0)
for step in range(2):
    batch = shard_batch(family, seed=step)
    loss = objective(engine, batch, generator=g, caption_dropout=0.5,
                     null_text=torch.zeros(batch["target_text"].shape[1:]))
    assert torch.isfinite(loss), loss
    engine.backward(loss)
    engine.step()
params = list(model.parameters())
with deepspeed.zero.GatheredParameters(params):
    assert all(torch.equal(v, frozen[k]) for k, v in model.backbone.state_dict().items()), "backbone changed"
    assert any(not torch.equal(v, expert[k]) for k, v in model.expert.state_dict().items()), "expert unchanged"
print("ok")
"""


@pytest.mark.slow
@pytest.mark.parametrize("family", ["cogvideox", "wan"])
def test_zero3_trains_only_the_expert(tiny_backbones, family):
    tests = str(Path(__file__).parent)
    code = SCRIPT.format(tests=tests, family=family, path=str(tiny_backbones[family]))
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "LOCAL_RANK": "0",
           "WORLD_SIZE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


# One rank of the platform's engine (`zero.build_engine`, what every worker builds): which
# parameters ZeRO-3 owns, the first loss against the same model without DeepSpeed, two steps.
ENGINE_SCRIPT = r"""
import copy, json, sys, warnings
from pathlib import Path
warnings.filterwarnings("ignore")
import torch, deepspeed, torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_model_helpers import shard_batch
from vap.spec import JobSpec
from vap.training import checkpoint as ckpt, zero
from vap.training.families import get_family
from vap.training.model import load_vap

spec = JobSpec.model_validate(json.loads({spec!r}))
family = spec.model.family
model = load_vap(spec.model)
plain = copy.deepcopy(model)  # the oracle: the same weights, no DeepSpeed
frozen = {{k: v.clone() for k, v in model.backbone.state_dict().items()}}
expert = {{k: v.clone() for k, v in model.expert.state_dict().items()}}
zero.init_distributed(False)
rank, world = dist.get_rank(), dist.get_world_size()
engine, _ = zero.build_engine(model, spec, world)
owned = [hasattr(p, "ds_id") for p in model.backbone.parameters()]
assert all(owned) if zero.partitions_frozen(spec) else not any(owned), ("backbone under ZeRO-3", sum(owned))
# every expert parameter is ZeRO-3's and split over the ranks (a rank holds ceil(numel / world))
for name, p in model.expert.named_parameters():
    assert hasattr(p, "ds_id") and p.ds_tensor.numel() == -(-p.ds_numel // world), name
objective = get_family(family).objective(spec.model.backbone)
for step in range(2):
    batch = shard_batch(family, batch=1, seed=10 * step + rank)
    kw = dict(caption_dropout=0.0, null_text=torch.zeros(batch["target_text"].shape[1:]))
    loss = objective(engine, batch, generator=torch.Generator().manual_seed(step), **kw)
    if step == 0:
        with torch.no_grad():
            want = objective(plain, batch, generator=torch.Generator().manual_seed(step), **kw)
        assert torch.allclose(loss, want, rtol=1e-5, atol=1e-6), (float(loss), float(want))
    engine.backward(loss)
    engine.step()
with deepspeed.zero.GatheredParameters(list(model.parameters())):
    assert all(torch.equal(v, frozen[k]) for k, v in model.backbone.state_dict().items()), "backbone changed"
    assert any(not torch.equal(v, expert[k]) for k, v in model.expert.state_dict().items()), "expert unchanged"
# a checkpoint keeps the ZeRO state and the serving expert, not DeepSpeed's copies of its scripts
folder = Path({out!r}) / f"rank-{{rank}}"
folder.mkdir(parents=True)
ckpt.save(engine, model, folder, step=2, loader_state={{}}, meta={{}})
names = {{str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}}
assert f"vap/zero_pp_rank_{{rank}}_mp_rank_00_optim_states.pt" in names, names
assert not names & set(ckpt.RECOVERY_SCRIPTS), names
assert rank or "expert/diffusion_pytorch_model.safetensors" in names, names
dist.barrier()
dist.destroy_process_group()
print("ok")
"""


@pytest.mark.slow
@pytest.mark.parametrize(("family", "partition_frozen"), [("cogvideox", None), ("wan", False), ("cogvideox", True)])
def test_the_platform_engine_partitions_the_expert_and_the_backbone_only_when_asked(
        tiny_backbones, tmp_path, family, partition_frozen):
    """Two gloo ranks: on CPU by default the frozen backbone stays outside ZeRO-3 (whole on every rank,
    no fetch/release hooks: `zero.TrainableOnly`); `trainer.partition_frozen` puts it back under
    ZeRO-3. Either way the expert is split over the ranks, the first loss is the plain model's,
    two steps move only the expert (Wan: its modulation tables, read outside their modules'
    forward, too) and a checkpoint holds the ZeRO state without DeepSpeed's script copies."""
    from test_train_preflight import _spec

    from vap.spec import load_spec

    spec = load_spec(_spec(tmp_path, trainer={"partition_frozen": partition_frozen}))
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={
        "family": family, "backbone": str(tiny_backbones[family])})})
    code = ENGINE_SCRIPT.format(tests=str(Path(__file__).parent), spec=spec.model_dump_json(), out=str(tmp_path / "ckpt"))
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(r),
                                   "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "DS_ACCELERATOR": "cpu"})
             for r in range(2)]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    failed = {r: err[-3000:] for r, (proc, (out, err)) in enumerate(zip(procs, outputs, strict=True))
              if proc.returncode != 0 or not out.strip().endswith("ok")}
    assert not failed, failed


@pytest.mark.parametrize(("use_gpu", "setting", "partitioned"),
                         [(True, None, True), (False, None, False), (True, False, False), (False, True, True)])
def test_the_frozen_backbone_is_partitioned_on_gpu_unless_the_spec_says(tmp_path, use_gpu, setting, partitioned):
    from test_train_preflight import _spec

    from vap.spec import load_spec
    from vap.training.zero import partitions_frozen

    spec = load_spec(_spec(tmp_path, trainer={"use_gpu": use_gpu, "partition_frozen": setting}))
    assert partitions_frozen(spec) is partitioned


def test_wan_registers_the_parameters_it_reads_outside_their_modules(tiny_backbones):
    """When the engine wraps the whole model (`partition_frozen`), ZeRO-3 must gather the
    modulation tables Wan's blocks read outside their own forward: the model registers them with
    DeepSpeed. The expected set is written out from Wan's blocks, not taken from the adapter."""
    from vap.training.model import VAPTransformer

    model = VAPTransformer.from_backbone(str(tiny_backbones["wan"]), "wan")
    registered = {id(p) for p in getattr(model, "_external_params", {}).values()}
    want = [model.backbone.scale_shift_table]
    for key, block in model.expert.blocks.items():
        want += [model.backbone.blocks[int(key)].scale_shift_table, block.scale_shift_table]
    assert registered == {id(p) for p in want}
