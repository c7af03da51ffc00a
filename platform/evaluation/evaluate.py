"""`vap eval`: does an expert carry the reference's condition into a new video?

    report = evaluate(spec, "models:/vap-expert-demo@champion", split="val", pairs=48)
    print(report.table()); report.to_json()

For each held-out pair of the spec's snapshot (`pair_id` = `target<-reference`, clip ids that
name the raw clips under the snapshot's `source`), three generations from the target's first
frame and a caption that does not name the condition (`scene_caption`, the reference's caption
likewise, so only the reference *video* can carry it):
- **vap**: with the pair's reference; judged against the reference's condition;
- **baseline_backbone**: the backbone alone, no reference; judged against the same condition;
- **mismatched**: with another condition's clip as the reference; judged against *that* condition.
The condition recogniser judges each output (top-1 agreement, probability of the condition);
copying, the optical-flow proxies and the validation denoising loss complete the row. Means and
bootstrap 95 % intervals per condition, category and overall (`vap.evaluation.report`).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vap import storage
from vap.errors import DataError, ModelError
from vap.evaluation.report import EvalReport
from vap.spec import JobSpec, load_spec

log = logging.getLogger(__name__)

SPLITS = ("val", "unseen")
LOSS_SEED = 1234  # fixed noise and timesteps: the trainer's eval_loss draws them the same way
GRID_PAIRS = 6  # pairs shown in the grid artifacts


@dataclass
class _Pair:
    pair_id: str
    condition: str
    category: str
    target: np.ndarray  # uint8 [F, H, W, 3], the ground truth
    reference: np.ndarray
    caption: str
    reference_caption: str
    loss: float
    twins: dict[str, np.ndarray] | None = None  # the target's scene under each condition


def evaluate(spec: JobSpec | str | Path, model: str, split: str = "val", pairs: int | None = None, *,
             out_dir: str | Path | None = None, steps: int = 25, guidance_scale: float = 1.0, seed: int = 0,
             record: bool = True, recogniser: str | Path | None = None, progress: bool = True,
             reference_guidance_scale: float = 0.0, twins=None) -> EvalReport:
    """Evaluate `model` (`models:/name@alias`, `models:/name/N` or a checkpoint URI) on the first
    `pairs` pairs (None: all) of `split` of the spec's snapshot. Writes `eval-<split>.json`,
    `grid-<split>.png` and `grid-<split>.mp4` to `out_dir` (if given) and, for a registered
    version with `record`, puts the metrics and those files on its MLflow run.
    reference_guidance_scale: the pipeline's push along (with − without reference), for the runs
    with a reference.
    twins: for counterfactual data (`vap.datasets.synth` start="neutral"), a function of a target
    clip id giving the ids of the same scene under each condition ({condition: clip id}); each
    output then also gets `counterfactual_top1`: 1 when the twin it is nearest to in pixels
    (`metrics.similarity`) is the condition it should carry — a judge that needs no recogniser."""
    import torch
    from rich.progress import Progress

    from vap.datasets.ingest import find_manifest
    from vap.datasets.loader import make_loader, resolve_snapshot
    from vap.datasets.snapshot import Snapshot
    from vap.evaluation.recogniser import load_recogniser
    from vap.training.families import get_family
    from vap.training.families.cogvideox.toy import scene_caption
    from vap.training.generate import resolve_expert
    from vap.training.model import VAPExpert
    from vap.training.pipeline import VAPPipeline

    spec = spec if isinstance(spec, JobSpec) else load_spec(spec)
    if split not in SPLITS:
        raise DataError(f"split {split!r}: evaluation runs on a held-out split; use one of {', '.join(SPLITS)}")
    snapshot = Snapshot.load(resolve_snapshot(spec.data.shards, spec.data.snapshot))
    if not snapshot.counts.get(split, {}).get("pairs"):
        fix = "data.val_fraction > 0" if split == "val" else "data.unseen_conditions >= 1"
        raise DataError(f"{snapshot.uri}: snapshot {snapshot.id} has no {split} pairs; rebuild it with {fix} "
                        f"or pick the other --split")
    expert = resolve_expert(model, spec.registry.tracking_uri)
    family = VAPExpert.load_config(expert.folder)["family"]
    if family != spec.model.family:
        raise ModelError(f"{model} is a {family} expert but the spec's model.family is {spec.model.family}; "
                         f"evaluate it with a {family} spec (or pass a {spec.model.family} model)")
    rec = load_recogniser(recogniser)
    pipe = VAPPipeline.from_expert(expert.folder, backbone=expert.backbone or spec.model.backbone)
    objective = get_family(family).objective(expert.backbone or spec.model.backbone)
    d = spec.data

    def clip(clip_id: str) -> np.ndarray:
        from vap.datasets.encode import read_clip

        uri = _clip_uri(root, clip_id)
        return read_clip(storage.read_bytes(uri), frames=d.frames, fps=d.fps, height=d.height, width=d.width,
                         window=d.time_window, name=uri)

    root = find_manifest(snapshot.index["source"]).rsplit("/", 1)[0]  # clip ids are relative to it
    cache = Path(tempfile.gettempdir()) / "vap-streaming" / spec.name / "eval"
    loader = make_loader(snapshot.uri, split, batch_size=1, seed=0, local_cache=cache, shuffle=False)
    total = min(pairs or snapshot.counts[split]["pairs"], snapshot.counts[split]["pairs"])
    held: list[_Pair] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"reading {split} pairs", total=total)
        for batch in loader:
            pair_id = batch["pair_id"][0]
            target_id, ref_id = pair_id.split("<-", 1)
            with torch.no_grad():
                loss = objective(pipe.transformer, batch, generator=torch.Generator().manual_seed(LOSS_SEED)).item()
            held.append(_Pair(pair_id, batch["condition"][0], batch["category"][0], clip(target_id), clip(ref_id),
                              scene_caption(batch["target_caption"][0]), scene_caption(batch["reference_caption"][0]),
                              loss, {c: clip(i) for c, i in twins(target_id).items()} if twins else None))
            bar.advance(task)
            if len(held) == total:
                break
    unknown = sorted({p.condition for p in held} - set(rec.conditions))
    if unknown:
        raise DataError(f"condition {unknown[0]!r} is unknown to the recogniser; pass --recogniser a folder "
                        "built on these conditions (`vap model recogniser OUT`)")
    pool = held + _other_pool(snapshot, split, clip, held, scene_caption, cache)
    report = EvalReport(model=model, split=split, snapshot=snapshot.id, steps=steps, guidance_scale=guidance_scale,
                        reference_guidance_scale=reference_guidance_scale)
    grid_rows = []
    with Progress(disable=not progress) as bar:
        task = bar.add_task(f"evaluating {model} on {split}", total=len(held))
        gen = dict(num_inference_steps=steps, guidance_scale=guidance_scale, num_frames=d.frames,
                   height=d.height, width=d.width)
        for i, p in enumerate(held):
            def run(reference, reference_caption, p=p, i=i):
                g = torch.Generator().manual_seed(seed + i)  # the same noise for the three runs of a pair
                push = reference_guidance_scale if reference is not None else 0.0
                return pipe(p.target[0], p.caption, reference, reference_caption, generator=g,
                            reference_guidance_scale=push, **gen).frames

            out = run(p.reference, p.reference_caption)
            alone = run(None, p.reference_caption)
            other = next((q for q in _rotate(pool, i) if q.condition != p.condition), None)
            wrong = run(other.reference, other.reference_caption) if other else None
            report.add(p.pair_id, p.condition, p.category, _row(rec, p, out, alone, other, wrong))
            if len(grid_rows) < GRID_PAIRS:
                grid_rows.append((p.reference, out, p.target))
            bar.advance(task)
    if out_dir is not None:
        files = report.write(out_dir, grid_rows)
        if record and model.startswith("models:/"):
            _record(spec, model, report, files)
    return report


def _row(rec, p: _Pair, out, alone, other: _Pair | None, wrong) -> dict[str, float]:
    from vap.evaluation import metrics

    judged = [(out, p.condition), (alone, p.condition)] + ([(wrong, other.condition)] if other else [])
    probs = rec.predict_proba(np.stack([clip for clip, _ in judged]))
    row: dict[str, float] = {}
    names = ("", "baseline_backbone.", "mismatched.")[:len(judged)]
    for (_, condition), prob, name in zip(judged, probs, names, strict=True):
        c = rec.conditions.index(condition)
        row[f"{name}alignment_top1"] = float(prob.argmax() == c)
        row[f"{name}alignment_prob"] = float(prob[c])
    if p.twins:
        for (clip, condition), name in zip(judged, names, strict=False):
            if condition in p.twins:
                row[f"{name}counterfactual_top1"] = float(nearest_twin(clip, p.twins) == condition)
    row["copying"] = metrics.copying(out, p.reference, p.target)["copying"]
    row["motion_smoothness"] = metrics.motion_smoothness(out)
    row["dynamic_degree"] = metrics.dynamic_degree(out)
    row["temporal_flicker"] = metrics.temporal_flicker(out)
    row["loss"] = p.loss
    return row


def nearest_twin(output: np.ndarray, twins: dict[str, np.ndarray]) -> str:
    """The condition whose twin (the same scene under it) is most similar to `output` in pixels."""
    from vap.evaluation.metrics import similarity

    return max(twins, key=lambda c: similarity(output, twins[c]))


def _rotate(pool: list, i: int) -> list:
    """The pool starting after pair i: each pair gets a different mismatched reference."""
    k = (i + 1) % len(pool)
    return pool[k:] + pool[:k]


def _other_pool(snapshot, split: str, clip, held: list[_Pair], scene_caption, cache: Path) -> list[_Pair]:
    """Mismatched references when the evaluated pairs share one condition (an `unseen` split of
    one condition): the other held-out split's first pair of each other condition."""
    from vap.datasets.loader import make_loader

    if len({p.condition for p in held}) > 1:
        return []
    other = "unseen" if split == "val" else "val"
    if not snapshot.counts.get(other, {}).get("pairs"):
        other = "train"
    if not snapshot.counts.get(other, {}).get("pairs"):
        return []
    found: dict[str, _Pair] = {}
    for batch in make_loader(snapshot.uri, other, batch_size=1, seed=0, local_cache=cache, shuffle=False):
        condition = batch["condition"][0]
        if condition not in found and condition != held[0].condition:
            ref_id = batch["pair_id"][0].split("<-", 1)[1]
            found[condition] = _Pair(batch["pair_id"][0], condition, batch["category"][0], None, clip(ref_id), "",
                                     scene_caption(batch["reference_caption"][0]), float("nan"))
    return list(found.values())


def _clip_uri(root: str, clip_id: str) -> str:
    """The raw clip a snapshot's clip id names: ids are manifest paths without their extension."""
    from vap.training.generate import VIDEO_SUFFIXES

    for suffix in ("", *VIDEO_SUFFIXES):
        uri = storage.join(root, clip_id + suffix)
        if storage.exists(uri):
            return uri
    raise DataError(f"{root}: clip {clip_id} of the snapshot is gone from its source; restore the raw clips "
                    "the snapshot was built from (index.json's source)")


def _record(spec: JobSpec, model: str, report: EvalReport, files: list[Path]) -> None:
    from vap.registry import Registry

    name = model.removeprefix("models:/").split("@")[0].split("/")[0]
    registry = Registry(spec.registry.tracking_uri, name)
    version = registry.resolve(model).version
    registry.record_evaluation(str(version), report.metrics(), artifacts=files)
    report.recorded_on = f"{name} version {version}"
