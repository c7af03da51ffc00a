"""`build_snapshot`: layout, content-addressed ids, no work on rebuild, resume after interruption,
quarantine of unusable clips, S3 (a real moto server) and an unreachable endpoint."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from vap import storage
from vap.datasets import snapshot as snap
from vap.datasets.build import backbone_folder, build_snapshot, identify, read_inputs
from vap.datasets.encode import ClipEncoder
from vap.datasets.synth import encode_mp4, synthesize
from vap.errors import DataError, StorageError
from vap.spec import parse_spec


def make_spec(backbone: Path, source: str, shards: str, family: str = "cogvideox", **data):
    data = {"source": source, "shards": shards, "frames": 9, "fps": 8.0, "val_fraction": 0.0,
            "unseen_conditions": 1, "pairs_per_part": 4, **data}
    return parse_spec({"name": "t", "model": {"family": family, "backbone": str(backbone)}, "data": data,
                       "storage": {"uri": "/tmp/unused"}, "registry": {"tracking_uri": "sqlite:////tmp/unused.db"}})


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """4 conditions (one per category) × 4 clips of 17 frames at 8 fps."""
    out = tmp_path_factory.mktemp("src")
    synthesize(str(out), conditions_per_category=1, clips_per_condition=4, frames=17, fps=8.0, size=32, progress=False)
    return out


@pytest.fixture(scope="module")
def built(tiny_backbones, source, tmp_path_factory):
    spec = make_spec(tiny_backbones["cogvideox"], str(source), str(tmp_path_factory.mktemp("shards")))
    return spec, build_snapshot(spec, progress=False)


def test_build_writes_a_complete_snapshot(built):
    spec, s = built
    root = Path(s.uri)
    assert root == Path(spec.data.shards) / s.id
    assert (Path(spec.data.shards) / "LATEST").read_text().strip() == s.id
    # 4 conditions × 4 clips, one condition held out as unseen, one reference per target
    assert s.counts["train"]["pairs"] == 12 and s.counts["unseen"]["pairs"] == 4 and s.counts["val"]["pairs"] == 0
    assert sum(s.counts["train"]["by_category"].values()) == 12 and len(s.counts["train"]["by_condition"]) == 3
    for split in ("train", "unseen"):
        index = json.loads((root / split / "index.json").read_text())
        assert sum(sh["samples"] for sh in index["shards"]) == s.counts[split]["pairs"]
        for shard in index["shards"]:
            assert (root / split / shard["zip_data"]["basename"]).is_file()
            assert shard["compression"] == "zstd" and set(shard["zip_data"]["hashes"]) == {"sha1", "xxh64"}
    assert not (root / "val").exists()
    assert np.load(root / "null_text.npy").shape == (16, 32)
    report = json.loads((root / "report" / "report.json").read_text())
    assert report["pairs"] == {"train": 12, "val": 0, "unseen": 4}
    assert (root / "report" / "quarantine.csv").is_file() and (root / "report" / "distribution.png").is_file()
    assert s.index["encoded_clips"] == 16  # each clip encoded once, though most appear in two pairs
    assert snap.verify_snapshot(s.uri) == len(s.index["shards"]["train"]) + len(s.index["shards"]["unseen"])


def test_rebuild_with_unchanged_inputs_does_no_work(built, monkeypatch):
    from vap.datasets import build as build_mod

    spec, first = built

    def forbidden(*a, **k):
        raise AssertionError("a rebuild of unchanged inputs must not validate, decode or encode clips")

    monkeypatch.setattr(build_mod, "ingest", forbidden)
    monkeypatch.setattr(ClipEncoder, "from_pretrained", forbidden)
    again = build_snapshot(spec, progress=False)
    assert again.id == first.id and again.reused
    assert "nothing rebuilt" in again.summary()


def test_touched_but_identical_source_is_checked_then_reused(tiny_backbones, source, tmp_path, monkeypatch):
    src = tmp_path / "src"
    shutil.copytree(source, src)
    spec = make_spec(tiny_backbones["cogvideox"], str(src), str(tmp_path / "shards"), frames=5)
    first = build_snapshot(spec, progress=False)
    clip = sorted((src / "videos").iterdir())[0]
    clip.write_bytes(clip.read_bytes())  # new mtime, same bytes: validated and hashed again, not encoded
    from vap.datasets import build as build_mod

    validated = []
    real_ingest = build_mod.ingest
    monkeypatch.setattr(build_mod, "ingest", lambda *a, **k: validated.append(1) or real_ingest(*a, **k))
    monkeypatch.setattr(ClipEncoder, "from_pretrained", lambda *a, **k: pytest.fail("must not encode"))
    again = build_snapshot(spec, progress=False)
    assert again.id == first.id and again.reused and validated == [1]


def test_snapshot_id_is_content_addressed(tiny_backbones, source, tmp_path):
    backbone = backbone_folder(str(tiny_backbones["cogvideox"]))

    def sid(src: Path, **data) -> str:
        spec = make_spec(tiny_backbones["cogvideox"], str(src), str(tmp_path / "shards"), **data)
        return identify(spec, read_inputs(spec, progress=False), backbone)[0]

    base = sid(source)
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    assert sid(copy) == base  # the same bytes and labels elsewhere: the same snapshot
    assert sid(source, frames=13) != base and sid(source, seed=1) != base

    csv = copy / "metadata.csv"
    csv.write_text(csv.read_text().replace("a ", "one ", 1))
    assert sid(copy) != base  # a caption changed
    shutil.copy(source / "metadata.csv", csv)
    clip = next(iter(sorted((copy / "videos").iterdir())))
    clip.write_bytes(encode_mp4(np.full((17, 32, 32, 3), 7, np.uint8), 8.0))
    assert sid(copy) != base  # a clip's bytes changed


def test_alignment_threshold_drops_poorly_aligned_clips(tiny_backbones, source, tmp_path):
    import csv

    rows = list(csv.DictReader((source / "metadata.csv").open()))
    low = sum(float(r["reference_alignment_score"]) <= 80 for r in rows)
    assert 0 < low < len(rows)
    spec = make_spec(tiny_backbones["cogvideox"], str(source), str(tmp_path / "shards"), min_alignment=80)
    inputs = read_inputs(spec, progress=False)
    assert len(inputs.result.clips) == len(rows) - low and len(inputs.result.rejected) == low
    assert all(c.alignment_score > 80 for c in inputs.result.clips)
    unfiltered = make_spec(tiny_backbones["cogvideox"], str(source), str(tmp_path / "shards"), min_alignment=None)
    backbone = backbone_folder(str(tiny_backbones["cogvideox"]))
    assert identify(spec, inputs, backbone)[0] != identify(unfiltered, read_inputs(unfiltered, progress=False), backbone)[0]


def test_interrupted_build_resumes_without_redoing_finished_parts(tiny_backbones, source, tmp_path, monkeypatch):
    spec = make_spec(tiny_backbones["cogvideox"], str(source), str(tmp_path / "shards"))
    real_write = snap.write_part
    written: list[tuple[str, int]] = []

    def crash_on_third(split_uri, i, samples, cols):
        if len(written) == 2:
            raise KeyboardInterrupt  # the build is killed while writing its third part
        written.append((Path(split_uri).name, i))
        return real_write(split_uri, i, samples, cols)

    monkeypatch.setattr(snap, "write_part", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        build_snapshot(spec, progress=False)
    assert not list((tmp_path / "shards").glob("*/index.json"))  # not visible as a snapshot
    assert not (tmp_path / "shards" / "LATEST").exists()

    done = list(written)
    written.clear()
    monkeypatch.setattr(snap, "write_part", lambda *a: (written.append((Path(a[0]).name, a[1])), real_write(*a))[1])
    s = build_snapshot(spec, progress=False)
    # train has 3 parts of 4 pairs, unseen 1: the two finished parts are not written again
    assert done == [("train", 0), ("train", 1)] and written == [("train", 2), ("unseen", 0)]
    assert s.counts["train"]["pairs"] == 12
    index = json.loads((Path(s.uri) / "train" / "index.json").read_text())
    assert sum(sh["samples"] for sh in index["shards"]) == 12


def test_too_short_clips_are_quarantined_and_the_rest_built(tiny_backbones, source, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(source, src)
    short = sorted((src / "videos").iterdir())[0]
    short.write_bytes(encode_mp4(np.zeros((4, 32, 32, 3), np.uint8), 8.0))  # 0.5 s; 9 frames at 8 fps need 1 s
    spec = make_spec(tiny_backbones["cogvideox"], str(src), str(tmp_path / "shards"), unseen_conditions=0)
    s = build_snapshot(spec, progress=False)
    assert s.index["rejected"] == {"too_short": 1} and s.index["clips"] == 15
    quarantine = (Path(s.uri) / "report" / "quarantine.csv").read_text()
    assert short.name in quarantine and "too_short" in quarantine
    assert s.counts["train"]["pairs"] == 15


def test_no_source_is_a_clear_error(tiny_backbones, tmp_path):
    spec = make_spec(tiny_backbones["cogvideox"], None, str(tmp_path / "shards"))
    with pytest.raises(DataError, match="data.source is not set"):
        build_snapshot(spec, progress=False)


def test_wan_snapshot_to_s3(tiny_backbones, source, s3_bucket, tmp_path):
    spec = make_spec(tiny_backbones["wan"], str(source), f"{s3_bucket}/vap-data", family="wan", pairs_per_part=8)
    s = build_snapshot(spec, progress=False)
    assert s.uri == f"{s3_bucket}/vap-data/{s.id}"
    names = storage.list_files(s.uri)
    assert {"index.json", "null_text.npy", "train/index.json", "report/report.json"} <= set(names)
    assert storage.read_bytes(f"{s3_bucket}/vap-data/LATEST").decode().strip() == s.id
    assert snap.verify_snapshot(s.uri) >= 2
    assert build_snapshot(spec, progress=False).reused


def test_unreachable_s3_endpoint_names_it(tiny_backbones, source, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there once closed
    for var in ("AWS_ENDPOINT_URL", "S3_ENDPOINT_URL"):
        monkeypatch.setenv(var, url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    spec = make_spec(tiny_backbones["cogvideox"], str(source), "s3://nowhere/vap-data")
    with pytest.raises(StorageError, match=f"cannot reach S3 endpoint {url}"):
        build_snapshot(spec, progress=False)

