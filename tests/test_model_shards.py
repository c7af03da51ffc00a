"""The contract between `vap.datasets` and the model (docs/CONTRACTS.md "Shard samples"): batches
of a real snapshot built from synthetic clips train the VAP transformer of either family."""

from __future__ import annotations

import pytest
import torch

from vap.datasets.build import build_snapshot
from vap.datasets.loader import load_null_text, make_loader
from vap.datasets.synth import synthesize
from vap.spec import parse_spec
from vap.training.families import get_family
from vap.training.model import load_vap


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    out = tmp_path_factory.mktemp("clips")
    synthesize(str(out), conditions_per_category=1, clips_per_condition=3, frames=9, fps=8.0, size=32,
               progress=False)
    return out


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
def test_shard_batches_train_the_model(tiny_backbones, clips, tmp_path, family):
    spec = parse_spec({
        "name": "shards", "model": {"family": family, "backbone": str(tiny_backbones[family]),
                                    "expert": {"blocks": "all"}},
        "data": {"source": str(clips), "shards": str(tmp_path / "shards"), "frames": 9, "fps": 8.0,
                 "val_fraction": 0.0, "unseen_conditions": 0},
        "storage": {"uri": str(tmp_path / "store")}, "registry": {"tracking_uri": "sqlite:////tmp/unused.db"},
    })
    snapshot = build_snapshot(spec, progress=False)
    batch = next(iter(make_loader(snapshot.uri, "train", batch_size=2, seed=0, local_cache=tmp_path / "cache")))
    null_text = load_null_text(snapshot.uri)

    model = load_vap(spec.model)
    objective = get_family(family).objective(spec.model.backbone)
    loss = objective(model, batch, generator=torch.Generator().manual_seed(0), caption_dropout=0.5,
                     null_text=null_text)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in model.backbone.parameters())
    assert sum(p.grad.abs().sum() for p in model.expert_parameters() if p.grad is not None) > 0
