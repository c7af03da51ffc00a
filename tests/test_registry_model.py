"""A registered version is an MLflow model: `mlflow.pyfunc.load_model("models:/NAME@champion")` in a
fresh process generates the video a direct `VAPPipeline` run makes with the same seed; its
lineage is on the version and in its model card; its weights are referenced, not copied.
And a tracking server that is down at the end of training loses nothing: `vap register --run`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BIN, REPO, free_port, wait_http
from PIL import Image

from vap import storage
from vap.datasets.synth import encode_mp4
from vap.errors import RegistryError
from vap.registry import PENDING, Registry, register_run, register_training
from vap.spec import parse_spec

pytestmark = pytest.mark.slow

PARAMS = {"num_frames": 9, "fps": 8.0, "height": 32, "width": 32, "num_inference_steps": 2, "seed": 3,
          "guidance_scale": 6.0, "reference_guidance_scale": 0.0}


@pytest.fixture(scope="module")
def trained(tiny_backbones, tmp_path_factory):
    """A snapshot built from synthetic clips and a checkpoint's expert/ as `vap train` leaves it."""
    from vap.datasets.build import build_snapshot
    from vap.datasets.synth import synthesize
    from vap.training.model import VAPTransformer

    root = tmp_path_factory.mktemp("registered")
    spec = {"name": "reg-model", "model": {"family": "cogvideox", "backbone": str(tiny_backbones["cogvideox"]),
                                           "expert": {"blocks": "all"}},
            "data": {"source": str(root / "raw"), "shards": str(root / "shards"), "frames": 9, "fps": 8,
                     "height": 32, "width": 32},
            "trainer": {"workers": 1, "steps": 2, "checkpoint_every": 2},
            "storage": {"uri": str(root / "runs")}}
    synthesize(spec["data"]["source"], conditions_per_category=1, clips_per_condition=2, frames=17, fps=8, size=32,
               progress=False)
    snapshot = build_snapshot(parse_spec({**spec, "registry": {"tracking_uri": f"sqlite:///{root}/x.db"}}),
                              progress=False)
    model = VAPTransformer.from_backbone(str(tiny_backbones["cogvideox"]), "cogvideox", blocks="all")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.expert_parameters():
            p.add_(0.05 * torch.randn_like(p))
    ckpt = root / "runs" / "reg-model" / "step-00000002"
    model.save_expert(ckpt / "expert")
    rng = np.random.default_rng(0)
    (root / "ref.mp4").write_bytes(encode_mp4(rng.integers(0, 255, (12, 40, 56, 3), dtype=np.uint8), 8.0))
    Image.fromarray(rng.integers(0, 255, (36, 50, 3), dtype=np.uint8)).save(root / "first.png")
    return spec, snapshot.uri, str(ckpt), root


def start_run(registry, spec):
    from vap.registry import code_version

    return registry.start_run(spec.name, {}, {"vap.snapshot": "s", "vap.code_version": code_version()})


PREDICT = """
import sys, numpy as np, pandas as pd, mlflow, torch, json
torch.set_num_threads(1)
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(f"models:/{sys.argv[2]}@champion")
row = {"image": sys.argv[3], "prompt": "a cat turns into a statue", "reference": sys.argv[4],
       "reference_prompt": "a dog turns into a statue"}
np.save(sys.argv[5], model.predict(pd.DataFrame([row]), params=json.loads(sys.argv[6])))
"""


def test_champion_loads_as_pyfunc_in_a_fresh_process_and_generates_the_pipelines_video(trained, mlflow_server):
    from mlflow import MlflowClient

    from vap.datasets.encode import read_clip
    from vap.training.generate import read_image
    from vap.training.pipeline import VAPPipeline

    raw, snapshot, ckpt, root = trained
    spec = parse_spec({**raw, "registry": {"tracking_uri": mlflow_server, "model_name": "reg-pyfunc"}})
    registry = Registry(mlflow_server, "reg-pyfunc", lock_uri=str(root / "locks"))
    run_id = start_run(registry, spec)
    version = register_training(registry, spec, run_id, snapshot, ckpt, {"eval_loss": 0.5, "loss": 0.4})
    assert registry.promote(version).decision == "promoted"

    out = root / "frames.npy"
    done = subprocess.run([sys.executable, "-c", PREDICT, mlflow_server, "reg-pyfunc", str(root / "first.png"),
                           str(root / "ref.mp4"), str(out), json.dumps(PARAMS)], capture_output=True, text=True,
                          timeout=900, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    frames = np.load(out)

    # the oracle: the pipeline itself, on the checkpoint's expert and the backbone, same seed
    pipe = VAPPipeline.from_expert(f"{ckpt}/expert", backbone=raw["model"]["backbone"])
    clip = read_clip((root / "ref.mp4").read_bytes(), frames=9, fps=8.0, height=32, width=32, window="evenly")
    direct = pipe(read_image(str(root / "first.png")), "a cat turns into a statue", clip, "a dog turns into a statue",
                  height=32, width=32, num_frames=9, num_inference_steps=2, guidance_scale=6.0,
                  generator=torch.Generator().manual_seed(3)).frames
    assert frames.shape == (1, 9, 32, 32, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames[0], direct)

    mv = registry.get_version(version)
    model_id = mv.source.removeprefix("models:/")
    client = MlflowClient(mlflow_server)
    # an MLflow model, not a bare folder: MLmodel with a signature and an input example, no weights
    files = {f.path for f in client.list_logged_model_artifacts(model_id)}
    assert model_id.startswith("m-") and {"MLmodel", "input_example.json", "python_model.pkl"} <= files
    assert not any(p.endswith(".safetensors") for p in files | _all_artifacts(client, model_id, "artifacts"))
    import mlflow

    local = mlflow.artifacts.download_artifacts(f"models:/{model_id}", dst_path=str(root / "model"),
                                                tracking_uri=mlflow_server)
    mlmodel = open(f"{local}/MLmodel").read()
    assert "python_function" in mlmodel and "signature:" in mlmodel and "num_inference_steps" in mlmodel
    # lineage on the version, checked against what the test made
    tags = mv.tags
    index = json.loads(storage.read_bytes(f"{snapshot}/index.json"))
    assert tags["run_id"] == run_id and tags["checkpoint_uri"] == ckpt and tags["expert_uri"] == f"{ckpt}/expert"
    assert tags["data_snapshot_id"] == snapshot.rsplit("/", 1)[-1] and json.loads(tags["data_shards"]) == index["shards"]
    assert tags["backbone"] == raw["model"]["backbone"] and tags["backbone_revision"].startswith("sha256:")
    assert tags["code_version"] == registry.client.get_run(run_id).data.tags["vap.code_version"]
    assert "name: reg-model" in tags["job_spec"] and tags["metric.eval_loss"] == "0.5"
    import hashlib

    weights = (root / "runs/reg-model/step-00000002/expert/diffusion_pytorch_model.safetensors").read_bytes()
    assert json.loads(tags["expert_files"])["diffusion_pytorch_model.safetensors"] == hashlib.sha256(weights).hexdigest()
    card = client.download_artifacts(run_id, "model_card.md", str(root))
    text = open(card).read()
    assert run_id in text and tags["backbone_revision"] in text and index["shards"]["train"][0]["sha1"] in text


def _all_artifacts(client, model_id, path):
    out = set()
    for f in client.list_logged_model_artifacts(model_id, path):
        out |= _all_artifacts(client, model_id, f.path) if f.is_dir else {f.path}
    return out


def test_a_changed_backbone_or_expert_is_refused_on_load(trained, tmp_path):
    from vap import expert_model
    from vap.errors import ModelError

    raw, _, ckpt, _ = trained
    backbone = tmp_path / "backbone"
    storage.download_dir(raw["model"]["backbone"], backbone)
    revision = expert_model.backbone_revision(str(backbone))
    assert expert_model.local_backbone(str(backbone), revision) == str(backbone)
    (backbone / "scheduler" / "scheduler_config.json").write_text("{}")
    with pytest.raises(ModelError, match="changed since this version was registered"):
        expert_model.local_backbone(str(backbone), revision)
    files = expert_model.file_hashes(Path(ckpt) / "expert")
    with pytest.raises(ModelError, match="not the file registered with this version"):
        expert_model.fetch_expert({"expert_uri": f"{ckpt}/expert", "files": {**files, "config.json": "0" * 64}})


@pytest.mark.mlflow  # starts (and stops) its own MLflow server, not the fixture's
def test_server_down_at_the_end_of_training_then_vap_register_recovers(trained, tmp_path, monkeypatch):
    from vap.registry import code_version

    raw, snapshot, ckpt, _ = trained
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
           "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]

    def server():
        proc = subprocess.Popen(cmd, stdout=(tmp_path / "mlflow.log").open("ab"), stderr=subprocess.STDOUT)
        wait_http(url + "/health", proc, "MLflow server", timeout=180)
        return proc

    proc = server()
    spec = parse_spec({**raw, "registry": {"tracking_uri": url, "model_name": "reg-recover"}})
    registry = Registry(url, "reg-recover")
    run_id = start_run(registry, spec)
    expert = f"{ckpt}/expert/diffusion_pytorch_model.safetensors"
    before = storage.read_bytes(expert)
    proc.terminate()
    proc.wait(30)

    with pytest.raises(RegistryError) as err:  # the end of `vap train`, server gone
        register_training(registry, spec, run_id, snapshot, ckpt, {"eval_loss": 0.5})
    line = str(err.value)
    assert "\n" not in line and f"cannot reach the MLflow tracking server at {url}" in line
    assert f"vap register --run {run_id}" in line and ckpt in line
    assert storage.read_bytes(expert) == before  # the checkpoint is intact
    assert storage.exists(f"{raw['storage']['uri']}/reg-model/{PENDING}")

    proc = server()
    try:
        config = tmp_path / "job.yaml"
        from vap.spec import dump_spec

        config.write_text(dump_spec(spec))
        out = subprocess.run([str(REPO / ".venv/bin/vap"), "register", "--run", run_id, "-c", str(config)],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        version = registry.version_of("challenger")
        assert f"registered reg-recover version {version}" in out.stdout
        tags = registry.get_version(version).tags
        assert (tags["run_id"], tags["checkpoint_uri"], tags["data_snapshot"], tags["metric.eval_loss"]) == (
            run_id, ckpt, snapshot, "0.5")
        assert tags["code_version"] == code_version() and tags["backbone"] == raw["model"]["backbone"]
        assert registry.client.get_run(run_id).info.status == "FINISHED"
        assert not storage.exists(f"{raw['storage']['uri']}/reg-model/{PENDING}")
        assert register_run(registry, spec, run_id) == version  # again: the same version, nothing new
    finally:
        proc.terminate()
        proc.wait(30)
