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
    model_validator,
)

from vap.errors import SpecError, VapError
from vap.storage import is_storage_location, parse_uri


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


# Field checks are plain functions (pydantic's Annotated validators, as URI above), and the model
# checks delegate to plain functions: a mutation tester skips decorated functions (docs/TESTING.md).
def _registered_family(value: str) -> str:
    from vap.training.families import family_names

    if value not in family_names():
        raise ValueError(f"unknown backbone family; use one of {family_names()}")
    return value


def _backbone_uri(value: str) -> str:
    return _uri(value) if is_storage_location(value) else value  # else a hub id


class ModelSpec(_Strict):
    family: Annotated[str, AfterValidator(_registered_family)] = Field(
        description="Backbone family, one folder of vap.training.families (cogvideox, wan).")
    backbone: Annotated[str, AfterValidator(_backbone_uri)] = Field(
        description="diffusers model repo: a hub id, a local path, file:// or s3:// URI (subfolders transformer/, vae/, text_encoder/, tokenizer/)."
    )
    expert: ExpertSpec = ExpertSpec()


class DataSpec(_Strict):
    source: URI | None = Field(
        None, description="Raw clips: a folder or s3:// prefix with VAP-Data's CSV (or a JSONL manifest)."
    )
    shards: URI = Field(description="Where MDS shard snapshots are written and read (path, file://, s3://).")
    clip_root: URI | None = Field(
        None, description="Folder or s3:// prefix every clip the manifest lists must lie under; null = the "
        "manifest's folder. Clips elsewhere (../, absolute paths, other buckets) are quarantined unread."
    )
    snapshot: str = Field("latest", description="Snapshot id to train on, or 'latest'.")
    frames: int = Field(9, ge=1, description="Video frames per clip after resampling (paper: 49).")
    time_window: Literal["evenly", "head"] = Field(
        "evenly", description="Which frames of a clip: evenly = `frames` of its frames at `fps` spread over the whole "
        "clip, first and last included (the authors', in training and at inference); head = its first `frames`."
    )
    fps: float = Field(8.0, gt=0, description="Frame rate clips are resampled to (paper: 16).")
    height: int = Field(32, ge=8, multiple_of=8, description="Clip height in pixels (paper: 480).")
    width: int = Field(32, ge=8, multiple_of=8, description="Clip width in pixels (paper: 720 / 832).")
    seed: int = Field(0, description="Seed of pairing and of the held-out splits.")
    text_len: int | None = Field(
        None, ge=1, description="Tokens per caption embedding; null = the family's (CogVideoX: the transformer's max_text_seq_length, Wan: 512)."
    )
    min_alignment: float | None = Field(
        10.0, description="Drop rows whose reference_alignment_score is at or below this: VAP-Data's score, on the "
        "authors' scale (0-100, their filter keeps > 10, the default); null keeps all."
    )
    refs_per_target: int = Field(1, ge=1, description="Reference clips paired with each target clip.")
    references_per_pair: int = Field(
        1, ge=1, description="References in each training sample, laid along time (the authors' multi-reference "
        "CogVideoX: each with its own caption and first frame); Wan takes 1. With more than 1 a pair's "
        "references are fixed (no per-epoch draw)."
    )
    reference_candidates: int = Field(
        4, ge=1, description="Candidate references stored with each pair (its own reference first, then the clip's "
        "listed same-condition clips, then others); training draws one afresh every epoch, as the authors "
        "draw from the same-condition list on every pass (seeded by trainer.seed and the epoch: resume is exact). "
        "1 = the pair's reference only."
    )
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
    # Robustness and DeepSpeed knobs
    max_failures: int = Field(
        3, ge=-1, description="Worker failures Ray Train recovers from in one `vap train` (restart from the latest "
                              "committed checkpoint); -1 retries forever, 0 fails at the first.")
    autoresume: bool = Field(
        True, description="Re-running a job resumes its MLflow run and its latest committed checkpoint.")
    checkpoints_kept: int = Field(2, ge=1, description="Committed checkpoints kept in storage (newest first).")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    adam_betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.99), description="AdamW (beta1, beta2).")
    activation_checkpointing: bool = Field(
        False, description="Recompute each block's activations in backward (needed at 480p on 80 GB GPUs).")
    partition_frozen: bool | None = Field(
        None, description="ZeRO-3 also partitions the frozen backbone (gathered around every block's forward and "
                          "backward: its share of memory per GPU shrinks with the GPUs, at the cost of gathers and "
                          "per-module hooks); false keeps it whole on every rank, only the expert partitioned. "
                          "Unset: partitioned on GPU (as `vap plan` counts it), whole on CPU.")


class StorageSpec(_Strict):
    uri: URI = Field(description="Root for runs and checkpoints: path, file:// or s3://bucket/prefix.")


class MetricGate(_Strict):
    greater_is_better: bool = Field(description="Direction of the metric (eval loss: false; alignment: true).")
    threshold: float | None = Field(
        None, description="Absolute bar: the challenger's value must be >= it (greater is better) or <= it.")
    margin: float = Field(
        0.0, ge=0, description="Non-regression: the challenger may be worse than @champion by at most this (0: equal or better).")


class PromotionSpec(_Strict):
    metrics: dict[str, MetricGate] = Field(
        default_factory=lambda: {"eval_loss": MetricGate(greater_is_better=False)},
        description="The gate of `vap promote`: metric name (a version's metric.* / eval.* tags) → its rule. "
                    "Every metric named must be on the challenger.")
    required: list[str] = Field(
        default_factory=list, description="More metrics the challenger must carry, without a rule (e.g. eval.val.loss).")

    @model_validator(mode="after")
    def _nonempty(self):
        return _gate_names_a_metric(self)


def _gate_names_a_metric(gate: PromotionSpec) -> PromotionSpec:
    if not gate.metrics and not gate.required:
        raise ValueError("a promotion gate needs at least one metric; list metrics or use `vap promote --force`")
    return gate


def _tracking_uri(value: str) -> str:
    try:
        return parse_tracking_uri(value)
    except VapError as err:  # pydantic reports ValueError with the key's location
        raise ValueError(str(err)) from None


class RegistrySpec(_Strict):
    tracking_uri: Annotated[str, AfterValidator(_tracking_uri)] = Field(
        description="MLflow tracking URI: http(s)://host:port or sqlite:///path.db.")
    experiment: str = "vap"
    model_name: str = Field("vap-expert", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    promotion: PromotionSpec = Field(default_factory=PromotionSpec, description="What a challenger must show to become @champion.")
    system_metrics_interval: float | None = Field(
        None, gt=0, description="Seconds between samples of MLflow's system metrics (system/cpu_utilization_percentage, "
                                "memory, disk, network; GPU with pynvml) on rank 0's node, into the job's run; unset: off.")


def parse_tracking_uri(value: str) -> str:
    """Check an MLflow tracking URI (the spec's or a `--tracking-uri`); RegistryError naming the fix.
    A relative sqlite path becomes absolute, so Ray workers open the same database."""
    from urllib.parse import urlparse

    from vap.errors import RegistryError

    if value.startswith(("http://", "https://")):
        if not urlparse(value).hostname:
            raise RegistryError(f"{_short(value)}: names no host; use http://host:port")
        return value
    if value.startswith("sqlite:///"):
        path = value.removeprefix("sqlite:///")
        if not path or path.endswith("/"):
            raise RegistryError(f"{_short(value)}: names no database file; use sqlite:///path/to/mlflow.db")
        return f"sqlite:///{Path(path).absolute()}"
    if value == "databricks" or value.startswith("databricks://"):
        return value
    raise RegistryError(f"{_short(value)} is not an MLflow URI; use http://host:port or sqlite:///path.db")


def _dns_label(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?", value):
        raise ValueError("use 1-42 lowercase letters, digits and '-', starting and ending alphanumeric (e.g. vap-demo)")
    return value


def _checkpoints_within_steps(spec: JobSpec) -> JobSpec:
    if spec.trainer.checkpoint_every > spec.trainer.steps:
        raise ValueError(
            f"trainer.checkpoint_every ({spec.trainer.checkpoint_every}) exceeds trainer.steps "
            f"({spec.trainer.steps}): no checkpoint would be written; lower it"
        )
    return spec


class JobSpec(_Strict):
    name: Annotated[str, AfterValidator(_dns_label)] = Field(
        description="Job name; it names the run, its checkpoints and Kubernetes objects.")
    model: ModelSpec
    data: DataSpec
    trainer: TrainerSpec = TrainerSpec()
    storage: StorageSpec
    registry: RegistrySpec

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        return _checkpoints_within_steps(self)


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
            problems.append(f"'{where}': {msg} (got {_short(e.get('input'))})")
    rest = len(problems) - 5
    more = f"; and {rest} more problem{'s' if rest > 1 else ''}" if rest > 0 else ""
    return f"{source}: invalid job spec: " + "; ".join(problems[:5]) + more


def parse_spec(data: object, source: str = "spec") -> JobSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a job spec is a YAML mapping, got {type(data).__name__}")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_explain(err, source)) from None


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """Read and validate a YAML job spec; raise SpecError naming the bad key and the fix.
    `overrides` are dotted `key=value` pairs (`trainer.steps=5`, values in YAML) applied before
    validation, so the same schema checks them."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as err:
        raise SpecError(f"{path}: cannot read the job spec ({err.strerror}); check the path") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: larger than {MAX_SPEC_BYTES >> 10} KiB, too large for a job spec; check the file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not UTF-8 text (byte {raw[err.start]:#04x} at offset {err.start}); "
                        "save the job spec as UTF-8") from None
    data = _load_yaml(text, path)
    return parse_spec(apply_overrides(data, overrides), str(path))


def apply_overrides(data: object, overrides: list[str] | tuple[str, ...]) -> object:
    """`data` with each dotted `key=value` set (value parsed as YAML); SpecError for a malformed one."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise SpecError(f"override {item!r}: write it as dotted.key=value (e.g. trainer.steps=5)")
        node = data
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict):
                raise SpecError(f"override {item!r}: '{'.'.join(parts[:i])}' is not a section")
            node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpecError(f"override {item!r}: '{'.'.join(parts[:-1])}' is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise SpecError(f"override {item!r}: the value is not valid YAML; quote it") from None
    return data


# A job spec is a few dozen values; anchors and aliases may share a block, but a document that
# expands past this many values is refused before anything walks it (an alias "bomb" of a few
# hundred bytes expands to billions, which validating or echoing it would materialise).
MAX_SPEC_BYTES = 1 << 20
MAX_SPEC_VALUES = 10_000


def _load_yaml(text: str, path: Path) -> object:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, path)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {_short(str(err), 200, repr_=False)}".replace("\n", " ")) from None
    except RecursionError:
        raise SpecError(f"{path}: nested too deeply for a job spec; check the file") from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, path: Path) -> None:
    """Count the values `root` expands to, each shared (aliased) node once per use."""
    sizes: dict[int, int] = {}  # finished nodes
    started: set[int] = set()  # a started node that is not finished yet is being walked: a cycle

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in started:
            raise SpecError(f"{path}: a YAML alias refers to the block that contains it; write the value out")
        started.add(key)
        n = 1
        if isinstance(node, yaml.SequenceNode):
            n += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            n += sum(size(k) + size(v) for k, v in node.value)
        sizes[key] = n
        if n > MAX_SPEC_VALUES:
            raise SpecError(f"{path}: YAML anchors/aliases expand to more than {MAX_SPEC_VALUES} values; "
                            "a job spec needs a few dozen: write the values out instead of aliasing them")
        return n

    size(root)


def _short(value: object, limit: int = 80, repr_: bool = True) -> str:
    """A bounded rendering of a bad value for an error message (never the whole of a huge one)."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxdict, r.maxlist, r.maxtuple, r.maxset = 2, 4, 4, 4, 4
    r.maxstring = r.maxother = limit
    text = r.repr(value) if repr_ else str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def dump_spec(spec: JobSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
