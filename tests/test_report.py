"""The dataset report: counts per condition / category / split, quarantine reasons, a PNG plot."""

from __future__ import annotations

import csv
import json

import matplotlib.image

from vap.datasets.ingest import ingest
from vap.datasets.pairs import make_pairs
from vap.datasets.records import CATEGORIES, Clip, IngestResult, Rejected
from vap.datasets.report import write_report
from vap.datasets.synth import synthesize


def test_report_counts_what_was_ingested_paired_and_quarantined(tmp_path):
    clips = [Clip(id=f"{cond}/{i}", uri=f"/d/{cond}/{i}.mp4", caption="c", condition=cond, category=cat)
             for cond, cat, n in (("shatter", "concept", 5), ("sepia", "style", 4), ("zoom_in", "camera", 3),
                                  ("lonely", "motion", 1))
             for i in range(n)]
    rejected = [Rejected("m.csv:row 9", "undecodable", "m.csv:row 9: bad, re-encode"),
                Rejected("m.csv:row 10", "missing_caption", "m.csv:row 10: write one"),
                Rejected("m.csv:row 11", "undecodable", "m.csv:row 11: bad, re-encode")]
    result = IngestResult(clips, rejected)
    pairs = make_pairs(clips, seed=0, val_fraction=0.2, unseen_conditions=1)
    report = write_report(result, pairs, tmp_path / "report")

    assert json.loads((tmp_path / "report" / "report.json").read_text()) == report
    assert report["clips"] == {"valid": 13, "rejected": 3, "unpaired": ["lonely/0"]}
    assert report["pairs"] == {s: len(p) for s, p in pairs.items()}
    assert report["quarantine"] == {"missing_caption": 1, "undecodable": 2}
    assert report["categories"] == {
        "concept": {"conditions": 1, "clips": 5}, "style": {"conditions": 1, "clips": 4},
        "motion": {"conditions": 1, "clips": 1}, "camera": {"conditions": 1, "clips": 3}}
    unseen = report["unseen_conditions"]
    assert len(unseen) == 1 and report["conditions"][unseen[0]]["pairs"]["train"] == 0
    for name, entry in report["conditions"].items():
        assert entry["clips"] == sum(c.condition == name for c in clips)
        assert entry["pairs"] == {s: sum(p.target.condition == name for p in ps) for s, ps in pairs.items()}

    with open(tmp_path / "report" / "quarantine.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["source"], r["reason"], r["detail"]) for r in rows] == [(r.source, r.reason, r.detail) for r in rejected]

    png = tmp_path / "report" / "distribution.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(png).shape
    assert width > 400 and height > 200


def test_report_of_a_synthetic_build_with_a_broken_clip(tmp_path):
    data = tmp_path / "data"
    synthesize(str(data), conditions_per_category=2, clips_per_condition=3, frames=5, progress=False)
    broken = sorted((data / "videos").iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:100])
    result = ingest(str(data), progress=False)
    report = write_report(result, make_pairs(result.clips, seed=0), tmp_path / "report")
    assert report["clips"]["valid"] == 23 and report["quarantine"] == {"truncated": 1}
    assert {cat: v["conditions"] for cat, v in report["categories"].items()} == dict.fromkeys(CATEGORIES, 2)
    assert sum(v["clips"] for v in report["conditions"].values()) == 23


def test_empty_input_still_gives_a_report(tmp_path):
    result = IngestResult([], [Rejected("m.csv:row 2", "missing_file", "m.csv:row 2: no such file")])
    report = write_report(result, make_pairs([], seed=0), tmp_path)
    assert report["clips"] == {"valid": 0, "rejected": 1, "unpaired": []}
    assert (tmp_path / "distribution.png").stat().st_size > 0
