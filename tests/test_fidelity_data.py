"""Real VAP-Data as released: a CSV without categories builds, and rejected rows always get a report."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from vap.datasets.build import build_snapshot
from vap.datasets.ingest import infer_category, ingest
from vap.datasets.synth import synthesize
from vap.errors import DataError
from vap.spec import parse_spec

# VAP-Data's own columns, exactly (no category); `kind` values that no table knows
REAL_COLUMNS = ["video_paths", "ref_video_paths", "tar_video_caption", "kind", "split", "reference_alignment_score"]


def spec_for(backbone: Path, source: Path, shards: Path):
    data = {"source": str(source), "shards": str(shards), "frames": 9, "fps": 8.0, "val_fraction": 0.0,
            "unseen_conditions": 0, "pairs_per_part": 8}
    return parse_spec({"name": "t", "model": {"family": "cogvideox", "backbone": str(backbone)}, "data": data,
                       "storage": {"uri": "/tmp/unused"}, "registry": {"tracking_uri": "sqlite:////tmp/unused.db"}})


@pytest.fixture(scope="module")
def real_layout(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vap-data")
    synthesize(str(out), conditions_per_category=1, clips_per_condition=3, frames=17, fps=8.0, size=32, progress=False)
    with (out / "metadata.csv").open() as f:
        rows = list(csv.DictReader(f))
    kinds = sorted({r["kind"] for r in rows})
    names = dict(zip(kinds, ("labubu", "ghibli_style", "wobble_effect", "dolly_zoom"), strict=True))
    for r in rows:
        r["kind"] = names[r["kind"]]
    with (out / "metadata.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, REAL_COLUMNS)
        w.writeheader()
        w.writerows({k: r[k] for k in REAL_COLUMNS} for r in rows)
    return out


def test_category_is_inferred_only_where_the_name_says_it():
    assert infer_category("dolly_zoom") == "camera" and infer_category("ghibli_style") == "style"
    assert infer_category("labubu") is None and infer_category("wobble_effect") is None
    assert infer_category("zoom_dance") is None  # two categories named: not a guess


def test_real_layout_csv_without_categories_builds(tiny_backbones, real_layout, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="vap.datasets.ingest"):
        result = ingest(str(real_layout), progress=False)
    assert result.rejected == [] and len(result.clips) == 12
    assert {c.condition: c.category for c in result.clips} == {
        "labubu": "uncategorized", "wobble_effect": "uncategorized", "ghibli_style": "style", "dolly_zoom": "camera"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once, with the count and how to map them
    assert "6 rows of 2 conditions" in warnings[0] and "categories.json" in warnings[0] and "labubu" in warnings[0]

    s = build_snapshot(spec_for(tiny_backbones["cogvideox"], real_layout, tmp_path / "shards"), progress=False)
    assert s.counts["train"]["pairs"] == 12
    assert s.counts["train"]["by_category"] == {"camera": 3, "style": 3, "uncategorized": 6}
    report = json.loads((Path(s.uri) / "report" / "report.json").read_text())
    assert report["conditions"]["labubu"]["category"] == "uncategorized"  # reported per condition
    assert report["categories"]["uncategorized"] == {"conditions": 2, "clips": 6}


def test_an_all_rejected_build_still_writes_its_quarantine_report(tiny_backbones, real_layout, tmp_path):
    source = tmp_path / "broken"
    source.mkdir()
    (source / "videos").mkdir()
    text = (real_layout / "metadata.csv").read_text()
    (source / "metadata.csv").write_text(text)
    rows = list(csv.DictReader(text.splitlines()))
    for i, r in enumerate(rows):  # empty, cut short, not a video: three distinct reasons
        clip = (real_layout / r["video_paths"]).read_bytes()
        body = [b"", clip[: len(clip) // 3], b"a text file, not a video\n"][i % 3]
        (source / r["video_paths"]).write_bytes(body)
    shards = tmp_path / "shards"
    with pytest.raises(DataError, match=r"no usable clips .*quarantine/quarantine.csv"):
        build_snapshot(spec_for(tiny_backbones["cogvideox"], source, shards), progress=False)
    with (shards / "quarantine" / "quarantine.csv").open() as f:
        quarantined = list(csv.DictReader(f))
    assert len(quarantined) == len(rows)
    reasons = {q["reason"] for q in quarantined}
    assert reasons == {"empty_file", "truncated", "not_a_video"}
    report = json.loads((shards / "quarantine" / "report.json").read_text())
    assert report["clips"] == {"valid": 0, "rejected": 12, "unpaired": []}


def test_min_alignment_defaults_to_the_authors_filter(real_layout, tmp_path):
    from vap.spec import DataSpec

    assert DataSpec(shards="/tmp/s").min_alignment == 10  # their flag: keep rows scoring > 10 (0-100 scale)
    text = (real_layout / "metadata.csv").read_text().splitlines()
    rows = list(csv.DictReader(text))
    rows[0]["reference_alignment_score"], rows[1]["reference_alignment_score"] = "10", "10.5"
    source = tmp_path / "scored"
    source.mkdir()
    (source / "videos").symlink_to(real_layout / "videos")
    with (source / "metadata.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, REAL_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    result = ingest(str(source), min_alignment=DataSpec(shards="/tmp/s").min_alignment, progress=False)
    assert [(r.source, r.reason) for r in result.rejected] == [("metadata.csv:row 2", "low_alignment")]
    assert rows[1]["video_paths"].removesuffix(".mp4") in {c.id for c in result.clips}
