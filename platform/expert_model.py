"""The MLflow model of a registered expert: a pyfunc wrapper that generates videos.

A version's model folder holds the `MLmodel` (signature, input example), the wrapper
(`VAPExpertModel`), a model card and `expert.json` — a *reference* to the weights, not a copy:
the expert's safetensors stay in the checkpoint that training wrote (listed with their sha256,
checked on load), and the frozen backbone is named by id and revision, never copied.

    model = mlflow.pyfunc.load_model("models:/vap-expert@champion")
    frames = model.predict(pd.DataFrame([{"image": "s3://…/first.png", "prompt": "…",
                                          "reference": "s3://…/ref.mp4", "reference_prompt": "…"}]),
                           params={"num_frames": 49, "seed": 0})   # uint8 [rows, F, H, W, 3]
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import mlflow.pyfunc

from vap import storage
from vap.errors import ModelError

log = logging.getLogger(__name__)

EXPERT_REF = "expert.json"  # the model folder's pointer to the checkpoint's expert/ and the backbone
MODEL_CARD = "model_card.md"
INPUT_COLUMNS = ("image", "prompt", "reference", "reference_prompt")  # image, reference: URIs (path, file://, s3://)
SMALL_FILE = 1 << 20  # backbone files up to this size (configs, tokenizers) enter the revision by content


def backbone_revision(backbone: str) -> str:
    """What pins a backbone: a hub id's snapshot commit, or for a folder / file:// / s3:// URI a
    digest of its file list, sizes and every small file's bytes (configs, tokenizer) — the
    weights by size only, so reading gigabytes is not the price of a registration."""
    from vap.storage import is_storage_location

    if not is_storage_location(backbone):
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(backbone, allow_patterns=["model_index.json"])).name  # …/snapshots/<commit>
    return folder_digest(storage.materialize(backbone))


def folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        size = path.stat().st_size
        h.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        if size <= SMALL_FILE:
            h.update(path.read_bytes())
    return "sha256:" + h.hexdigest()


def local_backbone(backbone: str, revision: str) -> str:
    """A local folder of `backbone` exactly at `revision`; ModelError when it has changed since."""
    from vap.storage import is_storage_location

    if not is_storage_location(backbone):
        from huggingface_hub import snapshot_download

        try:
            return snapshot_download(backbone, revision=revision)
        except Exception as err:  # offline without that snapshot, repo gone, revision gone
            raise ModelError(f"backbone {backbone} at revision {revision} is not available here "
                             f"({type(err).__name__}); download that revision or allow hub access") from None
    local = storage.materialize(backbone)
    found = folder_digest(local)
    if found != revision:
        raise ModelError(f"backbone {backbone} changed since this version was registered (revision {found}, "
                         f"registered {revision}); restore it or register the expert again against it")
    return str(local)


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: storage.sha256_file(p) for p in sorted(Path(folder).iterdir()) if p.is_file()}


def fetch_expert(ref: dict, cache_dir: str | Path | None = None) -> Path:
    """The referenced expert folder, local, every file checked against its registered sha256."""
    local = storage.materialize(ref["expert_uri"], cache_dir)
    found = file_hashes(local)
    wrong = sorted(name for name, digest in ref["files"].items() if found.get(name) != digest)
    if wrong:
        raise ModelError(f"{ref['expert_uri']}: {wrong[0]} is missing or not the file registered with this version "
                         "(sha256 differs); the checkpoint was changed or pruned — register its expert again")
    return local


class VAPExpertModel(mlflow.pyfunc.PythonModel):
    """Rows of (first-frame image URI, prompt, reference video URI, reference prompt) → videos."""

    def load_context(self, context) -> None:
        from vap.training.pipeline import VAPPipeline

        self.ref = json.loads(Path(context.artifacts["expert"]).read_text())
        storage.sync_endpoint_env()
        expert = fetch_expert(self.ref)
        backbone = local_backbone(self.ref["backbone"], self.ref["backbone_revision"])
        self.pipe = VAPPipeline.from_expert(expert, backbone=backbone)

    def predict(self, context, model_input, params: dict | None = None):
        """uint8 frames [rows, num_frames, height, width, 3]; params as in the signature."""
        import numpy as np
        import torch

        from vap.datasets.encode import read_clip
        from vap.training.generate import read_image

        p = {**self.ref["defaults"], **{k: v for k, v in (params or {}).items() if v is not None}}
        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        videos = []
        for i, row in enumerate(rows):
            missing = [c for c in INPUT_COLUMNS if not row.get(c)]
            if missing:
                raise ModelError(f"input row {i} lacks {missing}; give {', '.join(INPUT_COLUMNS)} "
                                 "(image and reference as path, file:// or s3:// URIs)")
            clip = read_clip(storage.read_bytes(row["reference"]), frames=int(p["num_frames"]), fps=float(p["fps"]),
                             height=int(p["height"]), width=int(p["width"]), window="evenly", name=row["reference"])
            out = self.pipe(read_image(row["image"]), row["prompt"], clip, row["reference_prompt"],
                            height=int(p["height"]), width=int(p["width"]), num_frames=int(p["num_frames"]),
                            num_inference_steps=int(p["num_inference_steps"]),
                            guidance_scale=float(p["guidance_scale"]),
                            reference_guidance_scale=float(p["reference_guidance_scale"]),
                            generator=torch.Generator().manual_seed(int(p["seed"])))
            videos.append(out.frames)
        return np.stack(videos)


def generation_defaults(family: str) -> dict:
    """The params a caller may leave out: the family's own generation settings (the authors')."""
    from vap.training.families import get_family

    gen = get_family(family).generation
    return {"num_frames": 49, "fps": 16.0, "height": gen.height, "width": gen.width, "num_inference_steps": 50,
            "guidance_scale": float(gen.guidance_scale), "reference_guidance_scale": 0.0, "seed": 0}


def signature(defaults: dict):
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    kinds = {int: "long", float: "double"}
    return ModelSignature(
        inputs=Schema([ColSpec("string", name) for name in INPUT_COLUMNS]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, -1, 3), "frames")]),
        params=ParamSchema([ParamSpec(k, kinds[type(v)], v) for k, v in defaults.items()]),
    )


INPUT_EXAMPLE = {"image": "s3://my-bucket/prompts/first_frame.png", "prompt": "a cat turns into a bronze statue",
                 "reference": "s3://my-bucket/prompts/reference.mp4",
                 "reference_prompt": "a dog turns into a bronze statue"}


def model_card(lineage: dict, metrics: dict, job_yaml: str) -> str:
    """Markdown: what the version is, where every part of it came from, how it scored."""
    shards = [f"| {split} | {s['file']} | {s['samples']} | {s.get('sha1', '')} |"
              for split, files in sorted(lineage["data_shards"].items()) for s in files]
    rows = [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(metrics.items())]
    return "\n".join([
        f"# VAP expert for {lineage['backbone']}", "",
        "A Mixture-of-Transformers expert trained on a frozen image-to-video backbone; it generates a video from a "
        "first frame and a caption, carrying the semantics of a reference video.", "",
        "## Lineage", "", "| | |", "|---|---|",
        *[f"| {k} | `{lineage[k]}` |" for k in ("run_id", "job", "checkpoint_uri", "expert_uri", "data_snapshot",
                                                 "data_snapshot_id", "code_version", "backbone",
                                                 "backbone_revision", "family")],
        "", "## Metrics", "", "| metric | value |", "|---|---|", *rows,
        "", "## Data shards", "", "| split | file | samples | sha1 |", "|---|---|---|---|", *shards,
        "", "## Job spec", "", "```yaml", job_yaml.rstrip(), "```", "",
        "## Use", "", "```python", "import mlflow, pandas as pd",
        "model = mlflow.pyfunc.load_model('models:/<name>@champion')",
        f"frames = model.predict(pd.DataFrame([{INPUT_EXAMPLE!r}]), params={{'seed': 0}})", "```", "",
    ])


def save(folder: Path, ref: dict, card: str, job_yaml: str, mlflow_model=None) -> Path:
    """Write the MLflow model folder (no weights: `ref` points at them). Nothing is loaded or run."""
    import pandas as pd

    folder = Path(folder)
    files = folder.parent / f"{folder.name}-files"
    files.mkdir(parents=True, exist_ok=True)
    (files / EXPERT_REF).write_text(json.dumps(ref, indent=2, sort_keys=True))
    (files / MODEL_CARD).write_text(card)
    (files / "job.yaml").write_text(job_yaml)
    mlflow.pyfunc.save_model(
        folder, python_model=VAPExpertModel(),
        artifacts={"expert": str(files / EXPERT_REF), "model_card": str(files / MODEL_CARD),
                   "job_spec": str(files / "job.yaml")},
        signature=signature(ref["defaults"]), input_example=(pd.DataFrame([INPUT_EXAMPLE]), ref["defaults"]),
        # the wrapper needs the vap package itself (the image has it); pinned so an environment
        # rebuilt from the model gets the MLflow that wrote it
        pip_requirements=[f"mlflow=={mlflow.__version__}", "vap-platform"], mlflow_model=mlflow_model,
    )
    return folder
