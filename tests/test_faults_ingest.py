"""Manifest paths are contained: `../` and absolute paths are quarantined unread, a clip listed
under two spellings is a duplicate, `data.clip_root` widens the root, and the unchanged-source
shortcut sees a change to any clip a build reads."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_build import make_spec

from vap.datasets import ingest as ingest_mod
from vap.datasets.build import build_snapshot
from vap.datasets.ingest import ingest, inside
from vap.datasets.synth import encode_mp4, synthesize


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    synthesize(str(out), conditions_per_category=1, clips_per_condition=3, frames=9, fps=8.0, size=32, progress=False)
    return out


def rewrite(manifest: Path, rows: list[dict]) -> None:
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_paths_outside_the_data_root_are_quarantined_unread(data, tmp_path, monkeypatch):
    root = tmp_path / "root"
    shutil.copytree(data, root)
    secret = tmp_path / "secret.mp4"
    shutil.copy(data / "videos" / sorted(p.name for p in (data / "videos").iterdir())[0], secret)
    rows = list(csv.DictReader((root / "metadata.csv").open()))
    template = rows[0]
    hostile = ["../secret.mp4", str(secret), "videos/../../secret.mp4", "/etc/passwd", f"file://{secret}"]
    rewrite(root / "metadata.csv", rows + [{**template, "video_paths": p, "ref_video_paths": ""} for p in hostile])
    opened = []
    real_check = ingest_mod.check_clip
    monkeypatch.setattr(ingest_mod, "check_clip", lambda uri, **k: opened.append(uri) or real_check(uri, **k))

    result = ingest(str(root), progress=False)
    assert result.reasons() == {"outside_root": 5}
    assert len(result.clips) == len(rows)
    assert all(inside(str(root), uri) for uri in opened) and len(opened) == len(rows)
    message = next(r.detail for r in result.rejected if "/etc/passwd" in r.detail)
    assert "is outside the data root" in message and "data.clip_root" in message

    widened = ingest(str(root), clip_root=str(tmp_path), progress=False)  # the spec allows the parent
    assert widened.reasons() == {"outside_root": 1, "duplicate": 3}  # /etc/passwd; secret.mp4 4 times
    assert str(secret) in {c.uri for c in widened.clips}


def test_one_clip_under_two_spellings_is_a_duplicate(data, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(data, root)
    rows = list(csv.DictReader((root / "metadata.csv").open()))
    first = rows[0]["video_paths"]  # videos/<name>.mp4
    spellings = [f"videos/../{first}", f"./{first}", first.replace("/", "//")]
    rewrite(root / "metadata.csv", rows + [{**rows[0], "video_paths": p} for p in spellings])
    result = ingest(str(root), progress=False)
    assert result.reasons() == {"duplicate": 3} and len(result.clips) == len(rows)


def test_inside_resolves_dots_and_compares_buckets():
    assert inside("s3://b/data", "s3://b/data/videos/x.mp4")
    assert not inside("s3://b/data", "s3://b/data/../other/x.mp4")
    assert not inside("s3://b/data", "s3://b/database/x.mp4")  # a prefix of the name is not a folder
    assert not inside("s3://b/data", "s3://c/data/x.mp4")
    assert not inside("/srv/data", "s3://b/srv/data/x.mp4")
    assert inside("/srv/data", "/srv/data/./a/../x.mp4") and not inside("/srv/data", "/srv/data/../x.mp4")


def test_the_shortcut_notices_a_changed_clip_beside_the_manifest_folder(tiny_backbones, data, tmp_path):
    shutil.copytree(data / "videos", tmp_path / "videos")
    manifest = tmp_path / "lists" / "metadata.csv"
    manifest.parent.mkdir()
    rows = list(csv.DictReader((data / "metadata.csv").open()))
    fix = lambda v: v.replace("videos/", "../videos/")  # noqa: E731
    rewrite(manifest, [{**r, "video_paths": fix(r["video_paths"]), "ref_video_paths": fix(r["ref_video_paths"])}
                       for r in rows])
    spec = make_spec(tiny_backbones["cogvideox"], str(manifest.parent), str(tmp_path / "shards"), frames=5,
                     unseen_conditions=0, clip_root=str(tmp_path))
    first = build_snapshot(spec, progress=False)
    assert first.index["clips"] == len(rows)
    clip = tmp_path / "videos" / Path(rows[0]["video_paths"]).name
    clip.write_bytes(encode_mp4(np.full((9, 32, 32, 3), 200, np.uint8), 8.0))  # outside lists/, inside the root
    again = build_snapshot(spec, progress=False)
    assert not again.reused and again.id != first.id
