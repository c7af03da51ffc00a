"""`vap generate`: an mp4 that PyAV decodes to the requested frames and size, from a checkpoint
folder, an s3:// checkpoint, or a registered model version `models:/name@alias`."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vap import storage
from vap.datasets.synth import encode_mp4
from vap.errors import ModelError
from vap.training.cli import app
from vap.training.generate import generate
from vap.training.model import VAPTransformer

SIZE = dict(frames=9, fps=8.0, height=32, width=48)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen-inputs")
    rng = np.random.default_rng(0)
    (root / "ref.mp4").write_bytes(encode_mp4(rng.integers(0, 255, (12, 40, 56, 3), dtype=np.uint8), 8.0))
    Image.fromarray(rng.integers(0, 255, (36, 50, 3), dtype=np.uint8)).save(root / "first.png")
    return root


def save_checkpoint(tiny_backbones, family, folder) -> None:
    """A checkpoint as `vap train` leaves it: the expert under expert/."""
    model = VAPTransformer.from_backbone(str(tiny_backbones[family]), family, blocks="all")
    with torch.no_grad():
        for p in model.expert_parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_expert(folder / "expert")


def decoded(data: bytes) -> tuple[int, int, int]:
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return len(frames), frames[0].shape[0], frames[0].shape[1]


def run(model, inputs, out, **kw):
    return generate(model, str(inputs / "first.png"), "a cat turns into a statue", str(inputs / "ref.mp4"),
                    "a dog turns into a statue", str(out), steps=2, progress=False, **SIZE, **kw)


def test_generate_from_a_checkpoint_folder(tiny_backbones, inputs, tmp_path):
    save_checkpoint(tiny_backbones, "cogvideox", tmp_path / "ckpt")
    out = run(str(tmp_path / "ckpt"), inputs, tmp_path / "out" / "video.mp4")
    assert decoded(storage.read_bytes(out)) == (9, 32, 48)


def test_generate_cli(tiny_backbones, inputs, tmp_path):
    save_checkpoint(tiny_backbones, "wan", tmp_path / "ckpt")
    out = tmp_path / "cli.mp4"
    args = ["generate", "-m", f"file://{tmp_path / 'ckpt'}", "--image", str(inputs / "ref.mp4"),
            "--prompt", "p", "--reference", str(inputs / "ref.mp4"), "--reference-prompt", "r", "-o", str(out),
            "--frames", "9", "--fps", "8", "--height", "32", "--width", "48", "--steps", "2",
            "--reference-guidance-scale", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert decoded(out.read_bytes()) == (9, 32, 48)


def test_a_folder_without_an_expert_is_refused(inputs, tmp_path):
    with pytest.raises(ModelError, match="no expert here"):
        run(str(tmp_path), inputs, tmp_path / "x.mp4")


@pytest.mark.slow
def test_generate_from_s3_and_a_registered_version(tiny_backbones, inputs, tmp_path, s3_bucket, mlflow_server,
                                                   monkeypatch):
    monkeypatch.setenv("VAP_CACHE", str(tmp_path / "cache"))
    save_checkpoint(tiny_backbones, "wan", tmp_path / "ckpt")
    ckpt = f"{s3_bucket}/runs/r1/checkpoint_000010"
    storage.upload_dir(tmp_path / "ckpt", ckpt)

    out = run(ckpt, inputs, f"{s3_bucket}/videos/from-ckpt.mp4")
    assert decoded(storage.read_bytes(out)) == (9, 32, 48)

    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    client.create_registered_model("vap-gen")
    version = client.create_model_version("vap-gen", source=storage.join(ckpt, "expert"),
                                          tags={"backbone": str(tiny_backbones["wan"]), "family": "wan"})
    client.set_registered_model_alias("vap-gen", "champion", version.version)
    out = run("models:/vap-gen@champion", inputs, tmp_path / "registered.mp4", tracking_uri=mlflow_server)
    assert decoded(storage.read_bytes(out)) == (9, 32, 48)
