"""The job spec: one YAML file that drives `vap train`, the chart's values and the operator.

Validated by pydantic with unknown keys forbidden (the API server would silently prune them;
we refuse them). `load_spec` turns every validation problem into one `SpecError` naming the
key and the fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from vap.errors import SpecError, VapError
from vap.storage import parse_uri


def _uri(value: str) -> str:
    """Check a storage URI; plain paths become absolute (Ray workers run in another directory)."""
    try:
        loc = parse_uri(value)
    except VapError as err:  # pydantic reports ValueError with the key's location
        raise ValueError(str(err)) from None
    return loc.uri


URI = Annotated[str, AfterValidator(_uri)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExpertSpec(_Strict):
    blocks: list[Annotated[int, Field(ge=0)]] | Literal["default", "all"] = Field(
        "default", description="Backbone blocks that get an expert copy ('default' = the paper's choice)."
    )
    reference_attention: Literal["joint", "one_way"] = Field(
        "joint", description="joint: both streams attend to both (paper). one_way: the reference attends only to itself."
    )
    rope_delta: int | None = Field(
        None, description="Temporal RoPE shift of reference tokens; null = -T (number of latent frames)."
    )


class ModelSpec(_Strict):
    family: Literal["cogvideox", "wan"]
    backbone: str = Field(
        description="diffusers model repo: a hub id, a local path, file:// or s3:// URI (subfolders transformer/, vae/, text_encoder/, tokenizer/)."
    )
    expert: ExpertSpec = ExpertSpec()

    @field_validator("backbone")
    @classmethod
    def _backbone_uri(cls, value: str) -> str:
        # A URI, a path-looking or existing folder is storage; anything else is a hub id ("org/name").
        if "://" in value or value.startswith((".", "/", "~")) or Path(value).expanduser().exists():
            return _uri(value)
        return value


class DataSpec(_Strict):
    source: URI | None = Field(
        None, description="Raw clips: a folder or s3:// prefix with VAP-Data's CSV (or a JSONL manifest)."
    )
    shards: URI = Field(description="Where MDS shard snapshots are written and read (path, file://, s3://).")
    snapshot: str = Field("latest", description="Snapshot id to train on, or 'latest'.")
    frames: int = Field(9, ge=1, description="Video frames per clip after resampling (paper: 49).")
    fps: float = Field(8.0, gt=0, description="Frame rate clips are resampled to (paper: 16).")
    height: int = Field(32, ge=8, multiple_of=8, description="Clip height in pixels (paper: 480).")
    width: int = Field(32, ge=8, multiple_of=8, description="Clip width in pixels (paper: 720 / 832).")
    seed: int = Field(0, description="Seed of pairing and of the held-out splits.")
    text_len: int | None = Field(
        None, ge=1, description="Tokens per caption embedding; null = the family's (CogVideoX: the transformer's max_text_seq_length, Wan: 512)."
    )
    min_alignment: float | None = Field(
        None, description="Drop clips whose reference_alignment_score is below this (the paper drops poorly aligned pairs); null keeps all."
    )
    refs_per_target: int = Field(1, ge=1, description="Reference clips paired with each target clip.")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Share of each seen condition's clips held out as val targets.")
    unseen_conditions: int = Field(1, ge=0, description="Whole conditions held out of training (the 'unseen' split, zero-shot).")
    pairs_per_part: int = Field(
        256, ge=1, description="Pairs per resumable unit of a build: an interrupted build redoes at most one part per split."
    )


class TrainerSpec(_Strict):
    workers: int = Field(2, ge=1, description="Ray Train workers (one per GPU on a cluster).")
    use_gpu: bool = False
    zero_stage: Literal[0, 1, 2, 3] = 3
    batch_size: int = Field(1, ge=1, description="Pairs per worker per step.")
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    warmup_steps: int = Field(0, ge=0)
    steps: int = Field(20, ge=1)
    checkpoint_every: int = Field(10, ge=1, description="Steps between checkpoints.")
    caption_dropout: float = Field(0.02, ge=0, le=1)
    seed: int = 0


class StorageSpec(_Strict):
    uri: URI = Field(description="Root for runs and checkpoints: path, file:// or s3://bucket/prefix.")


class RegistrySpec(_Strict):
    tracking_uri: str = Field(description="MLflow tracking URI: http(s)://host:port or sqlite:///path.db.")
    experiment: str = "vap"
    model_name: str = Field("vap-expert", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri(cls, value: str) -> str:
        if not value.startswith(("http://", "https://", "sqlite:///", "databricks")):
            raise ValueError(f"{value!r} is not an MLflow URI; use http://host:port or sqlite:///path.db")
        if value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
            # a relative sqlite path becomes absolute, so Ray workers open the same database
            return f"sqlite:///{Path(value.removeprefix('sqlite:///')).absolute()}"
        return value


class JobSpec(_Strict):
    name: str = Field(description="Job name; it names the run, its checkpoints and Kubernetes objects.")
    model: ModelSpec
    data: DataSpec
    trainer: TrainerSpec = TrainerSpec()
    storage: StorageSpec
    registry: RegistrySpec

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?", value):
            raise ValueError("use 1-42 lowercase letters, digits and '-', starting and ending alphanumeric (e.g. vap-demo)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        if self.trainer.checkpoint_every > self.trainer.steps:
            raise ValueError(
                f"trainer.checkpoint_every ({self.trainer.checkpoint_every}) exceeds trainer.steps "
                f"({self.trainer.steps}): no checkpoint would be written; lower it"
            )
        return self


def _where(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _explain(err: ValidationError, source: str) -> str:
    problems = []
    for e in err.errors():
        where = _where(e["loc"])
        kind = e["type"]
        if kind == "extra_forbidden":
            problems.append(f"unknown key '{where}': remove it or check its spelling")
        elif kind == "missing":
            problems.append(f"missing key '{where}': add it")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            problems.append(f"'{where}': {msg} (got {e.get('input')!r})")
    return f"{source}: invalid job spec: " + "; ".join(problems)


def parse_spec(data: object, source: str = "spec") -> JobSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a job spec is a YAML mapping, got {type(data).__name__}")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_explain(err, source)) from None


def load_spec(path: str | Path) -> JobSpec:
    """Read and validate a YAML job spec; raise SpecError naming the bad key and the fix."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError(f"{path}: cannot read the job spec ({err.strerror}); check the path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
    return parse_spec(data, str(path))


def dump_spec(spec: JobSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
