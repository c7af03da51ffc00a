"""`vap generate`: an mp4 from a registered model version or a checkpoint URI.

The expert comes from `models:/<name>@<alias>` (or `models:/<name>/<version>`; `vap.registry`
says where the version's expert is: the checkpoint's `expert/`, checked against its registered
sha256, with the backbone at its registered revision) or from a path / file:// / s3:// URI
of a folder written by `save_expert` (or a checkpoint holding one under `expert/`). The
backbone is the one the expert records, the version's `backbone` tag, or `backbone=`.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from vap import storage
from vap.errors import ModelError, RegistryError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi")


@dataclass(frozen=True)
class Expert:
    folder: Path  # local folder with config.json + safetensors
    backbone: str | None  # from the registry's tags, if any
    source: str


def _expert_folder(local: Path, where: str) -> Path:
    for folder in (local, local / "expert"):
        if (folder / "config.json").exists() and any(folder.glob("*.safetensors")):
            return folder
    raise ModelError(f"{where}: no expert here (expected config.json + safetensors, or an expert/ folder); "
                     "give a checkpoint written by `vap train` or a folder from save_expert")


def resolve_expert(model: str, tracking_uri: str | None = None, cache_dir: str | Path | None = None) -> Expert:
    """A local expert folder for a `models:/…` reference or a storage URI."""
    if not model.startswith("models:/"):
        return Expert(_expert_folder(storage.materialize(model, cache_dir), model), None, model)
    from vap.registry import Registry

    name = model.removeprefix("models:/").split("@")[0].split("/")[0]
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        raise RegistryError(f"{model}: no MLflow tracking URI; pass --tracking-uri or set MLFLOW_TRACKING_URI")
    storage.sync_endpoint_env()
    version, ref = Registry(tracking_uri, name).expert_ref(model)
    where = f"{model} (version {version}, {ref['expert_uri']})"
    if ref["files"]:  # a version registered as an MLflow model: its weights and backbone, checked
        from vap.expert_model import fetch_expert, local_backbone

        local = fetch_expert(ref, cache_dir)
        backbone = local_backbone(ref["backbone"], ref["backbone_revision"]) if ref.get("backbone_revision") else ref["backbone"]
    else:
        local, backbone = storage.materialize(ref["expert_uri"], cache_dir), ref["backbone"]
    log.info("%s → %s", model, where)
    return Expert(_expert_folder(Path(local), where), backbone, ref["expert_uri"])


def read_image(uri: str):
    """uint8 [H, W, 3] from an image file, or the first frame of a video, at any URI."""
    import numpy as np
    from PIL import Image

    data = storage.read_bytes(uri)
    if uri.lower().endswith(VIDEO_SUFFIXES):
        import av

        with av.open(io.BytesIO(data)) as container:
            frame = next(container.decode(video=0))
            return frame.to_ndarray(format="rgb24")
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def generate(model: str, image: str, prompt: str, reference: str | list[str], reference_prompt: str | list[str],
             out: str, *,
             backbone: str | None = None, tracking_uri: str | None = None, frames: int = 49, fps: float = 16.0,
             time_window: str = "evenly", height: int | None = None, width: int | None = None, steps: int = 50,
             guidance_scale: float | None = None, reference_guidance_scale: float = 0.0,
             negative_prompt: str | None = None, reference_negative_prompt: str | None = None,
             dynamic_cfg: bool | None = None, seed: int = 0, reference_attention: str | None = None,
             progress: bool = True) -> str:
    """Generate a video and write it as an mp4 to `out` (path or URI); returns `out`.

    None for height, width, guidance_scale, the negative prompts or dynamic_cfg means the
    family's default, the authors' (`Family.generation`: CogVideoX 480×720 g = 6 dynamic, Wan
    480×832 g = 5, their negative prompt for the target and the reference). Several references
    (CogVideoX): lists of reference URIs and of their captions, one each."""
    import torch

    from vap.datasets.encode import read_clip
    from vap.datasets.synth import encode_mp4
    from vap.training.pipeline import VAPPipeline

    expert = resolve_expert(model, tracking_uri)
    pipe = VAPPipeline.from_expert(expert.folder, backbone=backbone or expert.backbone,
                                   reference_attention=reference_attention)
    height = height or pipe.family.generation.height
    width = width or pipe.family.generation.width
    many = not isinstance(reference, str)
    refs = [read_clip(storage.read_bytes(r), frames=frames, fps=fps, height=height, width=width,
                      window=time_window, name=r) for r in (reference if many else [reference])]
    ref, reference_prompt = (refs, list(reference_prompt)) if many else (refs[0], reference_prompt)
    result = pipe(read_image(image), prompt, ref, reference_prompt, negative_prompt=negative_prompt,
                  reference_negative_prompt=reference_negative_prompt, height=height, width=width,
                  num_frames=frames, num_inference_steps=steps, guidance_scale=guidance_scale,
                  dynamic_cfg=dynamic_cfg, reference_guidance_scale=reference_guidance_scale,
                  generator=torch.Generator().manual_seed(seed), progress=progress)
    storage.write_bytes(out, encode_mp4(result.frames, fps))  # atomic, local or s3
    log.info("wrote %s (%d frames, %dx%d)", out, len(result.frames), width, height)
    return out
