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
