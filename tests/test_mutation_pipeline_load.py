"""What `VAPPipeline.from_expert` / `from_backbone` load: the expert folder's weights and settings,
the backbone's weights, its scheduler and encoders, on the device and in the dtype asked for.

Oracles: sha256 of every tensor read back with safetensors from the folders the test wrote or
the tiny backbone holds, and the folders' own JSON (the expert's config.json, model_index.json,
scheduler_config.json); never what the pipeline reports about itself. Only the loading is
exercised (no generation), so `make mutate` can afford a run per mutant (docs/TESTING.md).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from vap.datasets import encode
from vap.errors import ModelError
from vap.training.model import VAPTransformer
from vap.training.pipeline import VAPPipeline

FAMILY = "cogvideox"


def file_digests(path: Path) -> dict[str, str]:
    """sha256 of each tensor stored in a safetensors file, by key."""
    with safe_open(str(path), framework="pt") as f:
        return {key: hashlib.sha256(f.get_tensor(key).contiguous().numpy().tobytes()).hexdigest() for key in f.keys()}


def module_digests(module: torch.nn.Module) -> dict[str, str]:
    return {key: hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()
            for key, t in module.state_dict().items()}


def saved_expert(source: Path, folder: Path, blocks=(1,), mode="one_way", rope_delta=3.0, **config_edits) -> Path:
    """An expert on `blocks` of the backbone folder `source` whose weights differ from the backbone's (a trained one would), saved as
    `vap train` saves it; `config_edits` rewrite keys of its config.json (None removes the key)."""
    model = VAPTransformer.from_backbone(str(source), FAMILY, blocks=list(blocks), reference_attention=mode,
                                         rope_delta=rope_delta)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.expert_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    model.save_expert(folder)
    if config_edits:
        config = json.loads((folder / "config.json").read_text())
        for key, value in config_edits.items():
            config.pop(key) if value is None else config.__setitem__(key, value)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def expert_settings(pipe: VAPPipeline) -> tuple:
    config = pipe.transformer.config
    return list(config.expert_blocks), config.reference_attention, config.rope_delta


def assert_backbone_loaded(pipe: VAPPipeline, backbone: Path) -> None:
    """The frozen backbone, scheduler and encoders are the backbone folder's own."""
    assert module_digests(pipe.transformer.backbone) == file_digests(
        backbone / "transformer" / "diffusion_pytorch_model.safetensors")
    assert module_digests(pipe.encoder.vae) == file_digests(backbone / "vae" / "diffusion_pytorch_model.safetensors")
    # T5 stores its embedding once (`shared`); the module also lists the tied `encoder.embed_tokens`
    stored = file_digests(backbone / "text_encoder" / "model.safetensors")
    assert stored.items() <= module_digests(pipe.encoder.text_encoder).items()
    index = json.loads((backbone / "model_index.json").read_text())
    assert type(pipe.scheduler).__name__ == index["scheduler"][1]
    saved = json.loads((backbone / "scheduler" / "scheduler_config.json").read_text())
    assert {k: pipe.scheduler.config[k] for k in saved if not k.startswith("_")} == {
        k: v for k, v in saved.items() if not k.startswith("_")}
    assert pipe.encoder.family == FAMILY and pipe.family.name == FAMILY


def test_from_expert_holds_the_saved_expert_and_its_backbone(tiny_backbones, tmp_path):
    backbone = tiny_backbones[FAMILY]
    folder = saved_expert(backbone, tmp_path / "expert")
    pipe = VAPPipeline.from_expert(folder, device="cpu")
    assert module_digests(pipe.transformer.expert) == file_digests(folder / "diffusion_pytorch_model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    assert expert_settings(pipe) == (config["block_ids"], config["reference_attention"], config["rope_delta"])
    assert expert_settings(pipe) == ([1], "one_way", 3.0)
    assert_backbone_loaded(pipe, backbone)
    params = list(pipe.transformer.parameters())
    assert {p.dtype for p in params} == {torch.float32} and {p.device.type for p in params} == {"cpu"}
    assert pipe.device == torch.device("cpu") and pipe.encoder.device == torch.device("cpu")


def test_from_expert_takes_a_backbone_given_over_the_recorded_one(tiny_backbones, tmp_path):
    backbone = tiny_backbones[FAMILY]
    folder = saved_expert(backbone, tmp_path / "expert", backbone=str(tmp_path / "moved-away"))
    with pytest.raises(ModelError, match="moved-away"):
        VAPPipeline.from_expert(folder, device="cpu")
    pipe = VAPPipeline.from_expert(folder, backbone=f"file://{backbone}", device="cpu")
    assert_backbone_loaded(pipe, backbone)
    assert module_digests(pipe.transformer.expert) == file_digests(folder / "diffusion_pytorch_model.safetensors")


@pytest.mark.parametrize("recorded", ["", None])
def test_an_expert_that_names_no_backbone_is_refused(tiny_backbones, tmp_path, recorded):
    folder = saved_expert(tiny_backbones[FAMILY], tmp_path / "expert", backbone=recorded)
    with pytest.raises(ModelError) as err:
        VAPPipeline.from_expert(folder, device="cpu")
    assert str(err.value) == (f"{folder}: the expert does not record its backbone; pass the backbone explicitly")


def test_from_expert_settings_given_win_and_missing_ones_default(tiny_backbones, tmp_path):
    backbone = tiny_backbones[FAMILY]
    folder = saved_expert(backbone, tmp_path / "expert")
    assert expert_settings(VAPPipeline.from_expert(folder, reference_attention="joint", device="cpu")) == (
        [1], "joint", 3.0)
    bare = saved_expert(backbone, tmp_path / "bare", reference_attention=None, rope_delta=None)
    assert expert_settings(VAPPipeline.from_expert(bare, device="cpu")) == ([1], "joint", None)


def test_from_backbone_with_an_expert_takes_the_expert_blocks(tiny_backbones, tmp_path):
    backbone = tiny_backbones[FAMILY]
    folder = saved_expert(backbone, tmp_path / "expert", blocks=(0,), mode="joint", rope_delta=None)
    pipe = VAPPipeline.from_backbone(str(backbone), FAMILY, expert=folder, blocks="all", device="cpu")
    assert expert_settings(pipe) == ([0], "joint", None)
    assert module_digests(pipe.transformer.expert) == file_digests(folder / "diffusion_pytorch_model.safetensors")


def test_from_backbone_alone_clones_the_backbone_with_the_settings_given(tiny_backbones):
    backbone = tiny_backbones[FAMILY]
    pipe = VAPPipeline.from_backbone(str(backbone), FAMILY, blocks=[1], reference_attention="one_way",
                                     rope_delta=2.0, device="cpu", torch_dtype=torch.float64)
    assert expert_settings(pipe) == ([1], "one_way", 2.0)
    weights = backbone / "transformer" / "diffusion_pytorch_model.safetensors"
    with safe_open(str(weights), framework="pt") as f:  # float32 on disk, float64 exactly after the cast
        stored = {k: f.get_tensor(k).double() for k in f.keys()}
    loaded = pipe.transformer.backbone.state_dict()
    assert loaded.keys() == stored.keys() and all(torch.equal(loaded[k], stored[k]) for k in stored)
    expert = pipe.transformer.expert.blocks["1"].state_dict()  # the expert starts as the backbone's block 1
    assert expert and all(torch.equal(t, stored[f"transformer_blocks.1.{k}"]) for k, t in expert.items())
    assert {p.dtype for p in pipe.transformer.backbone.parameters()} == {torch.float64}


class Stop(Exception):
    """Raised by a spy once it has seen what it watches, so no CUDA device is ever touched."""


@pytest.mark.parametrize(("device", "dtype", "encoder_device"), [
    (None, torch.bfloat16, "cuda"), ("cuda:1", torch.bfloat16, "cuda:1"), ("cpu", torch.float32, "cpu")])
def test_with_a_gpu_the_transformer_is_bfloat16_on_cuda(tiny_backbones, monkeypatch, device, dtype, encoder_device):
    """Where CUDA is available: bfloat16 on a CUDA device by default, float32 on the CPU (the spies
    record the choice and stop before anything moves to a GPU this machine does not have)."""
    seen = {}
    build = VAPTransformer.from_backbone.__func__

    def transformer_spy(cls, *args, **kw):
        seen["dtype"] = kw["torch_dtype"]
        return build(cls, *args, **kw)

    def encoder_spy(cls, family, path, **kw):
        seen["encoder"] = (family, Path(path), kw["device"])
        raise Stop

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(VAPTransformer, "from_backbone", classmethod(transformer_spy))
    monkeypatch.setattr(encode.ClipEncoder, "from_pretrained", classmethod(encoder_spy))
    with pytest.raises(Stop):
        VAPPipeline.from_backbone(str(tiny_backbones[FAMILY]), FAMILY, blocks=[0], device=device)
    assert seen == {"dtype": dtype, "encoder": (FAMILY, tiny_backbones[FAMILY], encoder_device)}


def test_without_a_gpu_everything_is_float32_on_the_cpu(tiny_backbones, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pipe = VAPPipeline.from_backbone(str(tiny_backbones[FAMILY]), FAMILY, blocks=[0])
    assert pipe.device == torch.device("cpu") and pipe.encoder.device == torch.device("cpu")
    assert {p.dtype for p in pipe.transformer.parameters()} == {torch.float32}


def test_a_backbone_uri_is_read_from_its_local_copy(tiny_backbones, tmp_path):
    """A file:// backbone: the encoders and scheduler load from the folder it resolves to."""
    copy = shutil.copytree(tiny_backbones[FAMILY], tmp_path / "copy")
    pipe = VAPPipeline.from_backbone(f"file://{copy}", FAMILY, blocks=[0], device="cpu")
    assert_backbone_loaded(pipe, Path(copy))
