"""`vap eval`: end to end on a tiny model (table, JSON, grids, metrics on the registered
version's run), and bad input — a model that does not exist, a snapshot without held-out
pairs, an expert of another family — as one line and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from vap.datasets.build import build_snapshot
from vap.datasets.synth import synthesize
from vap.errors import DataError, ModelError, RegistryError
from vap.evaluation.evaluate import evaluate
from vap.registry import Registry
from vap.spec import load_spec
from vap.training.model import VAPTransformer

VAP = str(Path(sys.executable).parent / "vap")


def write_spec(path: Path, backbone: Path, source: Path, root: Path, family: str = "cogvideox", **data) -> Path:
    spec = {"name": "eval-test", "model": {"family": family, "backbone": str(backbone), "expert": {"blocks": "all"}},
            "data": {"source": str(source), "shards": str(root / "shards"), "frames": 9, "fps": 8.0, "height": 32,
                     "width": 32, "val_fraction": 0.25, "unseen_conditions": 1, "pairs_per_part": 8, **data},
            "storage": {"uri": str(root / "runs")},
            "registry": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "model_name": "vap-eval-test"}}
    path.write_text(yaml.safe_dump(spec))
    return path


def save_expert(backbone: Path, family: str, folder: Path) -> Path:
    model = VAPTransformer.from_backbone(str(backbone), family, blocks="all")
    with torch.no_grad():
        for p in model.expert_parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_expert(folder)
    return folder


@pytest.fixture(scope="module")
def world(tiny_backbones, tmp_path_factory):
    """4 conditions (one per category) × 4 clips; val holds one clip of each seen condition, unseen
    one whole condition; a tiny expert registered as version 1 of the spec's model."""
    root = tmp_path_factory.mktemp("eval")
    synthesize(str(root / "raw"), conditions_per_category=1, clips_per_condition=4, frames=17, size=32,
               progress=False)
    spec_path = write_spec(root / "spec.yaml", tiny_backbones["cogvideox"], root / "raw", root)
    spec = load_spec(spec_path)
    build_snapshot(spec, progress=False)
    expert = save_expert(tiny_backbones["cogvideox"], "cogvideox", root / "ckpt" / "expert")
    registry = Registry(spec.registry.tracking_uri, spec.registry.model_name)
    run_id = registry.start_run("eval-test", {}, {})
    registry.register(run_id, str(expert), {"backbone": str(tiny_backbones["cogvideox"]), "family": "cogvideox"})
    return root, spec_path, spec, expert


def test_vap_eval_end_to_end(world, tmp_path):
    root, spec_path, spec, _ = world
    out = tmp_path / "out"
    result = subprocess.run([VAP, "eval", "models:/vap-eval-test@challenger", "--config", str(spec_path),
                             "--split", "val", "--pairs", "3", "--steps", "2", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| **overall** | 3 |" in result.stdout and "recorded on vap-eval-test version 1" in result.stdout

    report = json.loads((out / "eval-val.json").read_text())
    rows = report["rows"]
    assert len(rows) == 3 and len({r["condition"] for r in rows}) == 3
    for r in rows:  # pair ids name raw clips of the pair's condition
        target, ref = r["pair_id"].split("<-")
        assert r["condition"] in target and r["condition"] in ref and target != ref
        v = r["values"]
        assert v["alignment_top1"] in (0.0, 1.0) and 0 <= v["alignment_prob"] <= 1
        assert v["mismatched.alignment_top1"] in (0.0, 1.0) and np.isfinite(v["loss"]) and v["loss"] > 0
    # the summary is the mean of the rows, and its interval holds it
    overall = report["summary"]["overall"]["alignment_prob"]
    assert overall["mean"] == pytest.approx(np.mean([r["values"]["alignment_prob"] for r in rows]))
    assert overall["low"] <= overall["mean"] <= overall["high"]

    # the grid: one line per pair of reference | generated | ground truth, 9 frames of 32 px each
    grid = np.asarray(Image.open(out / "grid-val.png"))
    assert grid.shape == (3 * (32 + 2), 3 * 9 * 32, 3)

    # the registry holds what the gate reads, on the version and on its run
    registry = Registry(spec.registry.tracking_uri, spec.registry.model_name)
    metrics = registry.version_metrics("1")
    assert metrics["eval.val.alignment_prob"] == pytest.approx(overall["mean"])
    assert metrics["eval.val.alignment_prob.low"] <= metrics["eval.val.alignment_prob"]
    run = registry.client.get_run(registry.get_version("1").run_id)
    assert run.data.metrics["eval.val.loss"] == pytest.approx(report["summary"]["overall"]["loss"]["mean"])
    artifacts = {a.path for a in registry.client.list_artifacts(run.info.run_id, "evaluation/v1")}
    assert artifacts == {f"evaluation/v1/{n}" for n in ("eval-val.json", "grid-val.png", "grid-val.mp4")}


def test_unseen_split_takes_mismatched_references_from_other_conditions(world):
    _, _, spec, expert = world
    report = evaluate(spec, str(expert), "unseen", 2, steps=1, progress=False)
    assert len(report.rows) == 2 and len({r["condition"] for r in report.rows}) == 1
    assert all("mismatched.alignment_prob" in r["values"] for r in report.rows)


def test_a_model_that_does_not_exist_is_one_line(world, tmp_path):
    _, spec_path, spec, _ = world
    with pytest.raises(ModelError, match="no expert here"):
        evaluate(spec, str(tmp_path / "nothing"), progress=False)
    with pytest.raises(RegistryError, match="does not exist"):
        evaluate(spec, "models:/vap-eval-test@nope", progress=False)
    result = subprocess.run([VAP, "eval", "models:/vap-eval-test/7", "-c", str(spec_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no version 7" in lines[0], result.stderr


def test_a_snapshot_without_held_out_pairs_is_refused(world, tiny_backbones, tmp_path):
    root, _, _, expert = world
    spec = load_spec(write_spec(tmp_path / "s.yaml", tiny_backbones["cogvideox"], root / "raw", tmp_path,
                                val_fraction=0.0, unseen_conditions=0))
    build_snapshot(spec, progress=False)
    with pytest.raises(DataError, match="has no val pairs; rebuild it with data.val_fraction > 0"):
        evaluate(spec, str(expert), "val", progress=False)
    with pytest.raises(DataError, match="has no unseen pairs"):
        evaluate(spec, str(expert), "unseen", progress=False)


def test_an_expert_of_another_family_is_refused(world, tiny_backbones, tmp_path):
    _, _, spec, _ = world
    wan = save_expert(tiny_backbones["wan"], "wan", tmp_path / "wan")
    with pytest.raises(ModelError, match="is a wan expert but the spec's model.family is cogvideox"):
        evaluate(spec, str(wan), progress=False)


def test_each_run_is_judged_against_its_own_reference_condition():
    """A perfect copier: its output is the reference, the 'backbone' shows another condition and
    the mismatched run is that other clip. The recogniser (≥ 95 % on clean clips) then gives
    top-1 1, 0 and 1, and copying is exactly 1 − similarity(reference, truth)."""
    from vap.datasets.synth import render_clip
    from vap.evaluation.evaluate import _Pair, _row
    from vap.evaluation.metrics import similarity
    from vap.evaluation.recogniser import load_recogniser

    rec = load_recogniser()
    ref, truth, other = (render_clip(c, 5, i, frames=9, size=32)[0]
                         for c, i in (("slide_right", 0), ("slide_right", 1), ("sepia", 0)))
    assert rec.predict(np.stack([ref, truth, other])) == ["slide_right", "slide_right", "sepia"]  # precondition
    pair = _Pair("a<-b", "slide_right", "motion", truth, ref, "", "", 0.5)
    mismatched = _Pair("c<-d", "sepia", "style", None, other, "", "", float("nan"))
    row = _row(rec, pair, ref, other, mismatched, other)
    assert (row["alignment_top1"], row["baseline_backbone.alignment_top1"], row["mismatched.alignment_top1"]) == (1, 0, 1)
    # more likely than not for the reference's condition, less for the clip of another one
    assert row["alignment_prob"] > 0.5 > row["baseline_backbone.alignment_prob"]
    assert row["copying"] == pytest.approx(1 - similarity(ref, truth)) and row["loss"] == 0.5
