"""The whole loop, small, against a real S3 server (moto over HTTP) and a real MLflow server:
synthetic clips → snapshot → Ray Train × 2 workers × DeepSpeed ZeRO-3 → checkpoint in S3 →
MLflow version @challenger → promoted to @champion."""

import hashlib
import io
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vap import storage
from vap.registry import Registry
from vap.spec import parse_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(s3_server, mlflow_server, ray_cluster, tiny_backbones, tmp_path_factory):
    import boto3

    from vap.datasets.build import build_snapshot
    from vap.datasets.synth import synthesize
    from vap.training.trainer import train

    bucket = "e2e"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    # the backbone too is read from object storage, as on a cluster
    storage.upload_dir(tiny_backbones["cogvideox"], f"s3://{bucket}/models/tiny-cogvideox")
    spec = parse_spec({
        "name": "e2e",
        "model": {"family": "cogvideox", "backbone": f"s3://{bucket}/models/tiny-cogvideox",
                  "expert": {"blocks": "all"}},
        "data": {"source": f"s3://{bucket}/raw", "shards": f"s3://{bucket}/vap-data", "frames": 9, "fps": 8,
                 "height": 32, "width": 32},
        "trainer": {"workers": 2, "zero_stage": 3, "steps": 6, "checkpoint_every": 3, "lr": 1e-3,
                    "caption_dropout": 0.0},
        "storage": {"uri": f"s3://{bucket}/runs"},
        "registry": {"tracking_uri": mlflow_server, "model_name": "e2e-expert"},
    })
    synthesize(spec.data.source, conditions_per_category=2, clips_per_condition=3, frames=17, fps=8, size=32)
    build_snapshot(spec, progress=False)
    return spec, train(spec)


def backbone_sha256(state: dict) -> str:
    """sha256 over a backbone's tensors, by name: computed here, not reported by the trainer."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_backbone_frozen_bitwise(trained, tiny_backbones, tmp_path):
    from vap.training.model import load_vap

    spec, result = trained
    # every rank fingerprints its ZeRO-3 shard of the frozen parameters before and after training
    assert result.metrics["frozen_unchanged"] is True
    # and the test's own checksum: the backbone the trained model runs with (read back from S3,
    # the checkpoint's expert loaded) has the bytes of the tiny backbone written before training
    before = {}
    for f in sorted((Path(tiny_backbones["cogvideox"]) / "transformer").glob("*.safetensors")):
        before.update(load_file(f))
    model = load_vap(spec.model)
    model.load_expert(storage.download_dir(storage.join(result.checkpoint_uri, "expert"), tmp_path / "expert"))
    assert backbone_sha256(model.backbone.state_dict()) == backbone_sha256(before)


def test_distributed_claims_are_in_the_checkpoint(trained):
    """2 workers, ZeRO stage 3, each rank's own partition: read off the files DeepSpeed and the
    trainer wrote, and the partition sizes computed from the expert's parameter shapes."""
    from vap.training.model import load_vap

    spec, result = trained
    uri, world = result.checkpoint_uri, spec.trainer.workers
    assert world == 2
    files = set(storage.list_files(uri))
    assert json.loads(storage.read_bytes(storage.join(uri, "vap-checkpoint.json")))["world_size"] == world
    assert {f for f in files if f.startswith("manifest/")} == {f"manifest/rank-{r}.json" for r in range(world)}
    ranks = {f for f in files if f.startswith("vap/") and f.endswith("_states.pt")}
    assert ranks == {f"vap/zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt" for r in range(world)
                     for kind in ("model", "optim")}
    for r in range(world):  # each rank's manifest lists its own partition files, whose sha256 the test checks
        listed = json.loads(storage.read_bytes(storage.join(uri, f"manifest/rank-{r}.json")))
        assert listed["rank"] == r and listed["world_size"] == world
        own = {f for f in ranks if f"zero_pp_rank_{r}_" in f}
        assert own <= set(listed["files"]), sorted(listed["files"])
        for f in own:
            assert hashlib.sha256(storage.read_bytes(storage.join(uri, f))).hexdigest() == listed["files"][f]["sha256"]

    def load(name):
        return torch.load(io.BytesIO(storage.read_bytes(storage.join(uri, name))), map_location="cpu",
                          weights_only=False)

    # ZeRO-3 splits every trainable tensor over the ranks, each padded to a multiple of the world size
    shapes = [p.shape for p in load_vap(spec.model).expert_parameters()]
    per_rank = sum(math.ceil(math.prod(s) / world) for s in shapes)
    for r in range(world):
        model_states = load(f"vap/zero_pp_rank_{r}_mp_rank_00_model_states.pt")
        assert model_states["dp_world_size"] == world
        assert model_states["ds_config"]["zero_optimization"]["stage"] == 3
        optim = load(f"vap/zero_pp_rank_{r}_mp_rank_00_optim_states.pt")["optimizer_state_dict"]
        assert int(optim["zero_stage"]) == 3 and optim["partition_count"] == world
        assert sum(g.numel() for g in optim["fp32_flat_groups"]) == per_rank < sum(math.prod(s) for s in shapes)


def test_loss_went_down(trained):
    spec, result = trained
    history = Registry(spec.registry.tracking_uri, spec.registry.model_name).metric_history(result.run_id, "eval_loss")
    steps = dict(history)
    assert sorted(steps) == [0, 3, 6]
    assert steps[6] < steps[0], history


def test_checkpoint_holds_expert_only_and_expert_changed(trained, tmp_path):
    from vap.training.model import load_vap

    spec, result = trained
    files = storage.list_files(result.checkpoint_uri)
    assert "vap-checkpoint.json" in files and any(f.startswith("expert/") for f in files)
    fresh = load_vap(spec.model)
    expert_names = {n for n, p in fresh.named_parameters() if p.requires_grad}
    frozen_names = {n for n, p in fresh.named_parameters() if not p.requires_grad}
    # DeepSpeed's module states: only expert parameters, never a backbone tensor
    for name in files:
        if name.endswith("model_states.pt"):
            data = torch.load(io.BytesIO(storage.read_bytes(storage.join(result.checkpoint_uri, name))),
                              map_location="cpu", weights_only=False)
            assert not set(data["module"]) & frozen_names
    local = storage.download_dir(storage.join(result.checkpoint_uri, "expert"), tmp_path / "expert")
    tensors = {}
    for f in Path(local).glob("*.safetensors"):
        tensors.update(load_file(f))
    assert tensors and len(tensors) == len(list(fresh.expert_parameters()))
    before = {n: p.detach().clone() for n, p in fresh.named_parameters() if n in expert_names}
    frozen_before = {n: p.detach().clone() for n, p in fresh.named_parameters() if n in frozen_names}
    fresh.load_expert(local)
    after = dict(fresh.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before), "the expert did not change"
    assert all(torch.equal(frozen_before[n], after[n]) for n in frozen_before)


def test_registered_version_points_at_checkpoint_and_alias_moves(trained):
    spec, result = trained
    registry = Registry(spec.registry.tracking_uri, spec.registry.model_name)
    version = registry.get_version(result.version)
    assert version.tags["expert_uri"] == storage.join(result.checkpoint_uri, "expert") and version.source.startswith("models:/m-")
    assert version.tags["data_snapshot"].startswith("s3://e2e/vap-data/")
    assert registry.version_of("challenger") == result.version
    promotion = registry.promote()
    assert promotion.version == result.version
    assert registry.version_of("champion") == result.version


def test_rerun_is_idempotent(trained):
    from vap.training.trainer import train

    spec, result = trained
    again = train(spec)
    assert (again.version, again.checkpoint_uri) == (result.version, result.checkpoint_uri)


def test_trainer_trains_wan_chosen_by_the_spec(ray_cluster, tiny_backbones, tmp_path):
    """The same trainer, Wan family: chosen by `model.family` alone (local store, sqlite MLflow)."""
    from vap.datasets.build import build_snapshot
    from vap.datasets.synth import synthesize
    from vap.training.trainer import train

    spec = parse_spec({
        "name": "e2e-wan",
        "model": {"family": "wan", "backbone": str(tiny_backbones["wan"]), "expert": {"blocks": "default"}},
        "data": {"source": str(tmp_path / "raw"), "shards": str(tmp_path / "shards"), "frames": 9, "fps": 8,
                 "height": 32, "width": 32},
        "trainer": {"workers": 2, "steps": 2, "checkpoint_every": 2, "lr": 1e-3},
        "storage": {"uri": str(tmp_path / "runs")},
        "registry": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "model_name": "e2e-wan"},
    })
    synthesize(spec.data.source, conditions_per_category=1, clips_per_condition=3, frames=17, fps=8, size=32)
    build_snapshot(spec, progress=False)
    result = train(spec, progress=False)
    assert result.metrics["step"] == 2 and result.metrics["frozen_unchanged"] is True
    config = storage.read_bytes(storage.join(result.checkpoint_uri, "expert", "config.json")).decode()
    assert '"family": "wan"' in config
