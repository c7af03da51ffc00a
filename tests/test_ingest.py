"""Ingest + validation: every clip decoded with PyAV; a bad clip or row is quarantined with its
reason (never a crash, never a silent drop); a bad *input* raises one clear error."""

from __future__ import annotations

import csv
import json
import socket
from pathlib import Path

import av
import pytest

from vap import storage
from vap.datasets.ingest import ingest
from vap.datasets.synth import CSV_COLUMNS, render_clip, synthesize
from vap.datasets.validate import check_clip, probe
from vap.errors import DataError, StorageError

N_GOOD = 8  # 1 condition per category x 2 clips


@pytest.fixture()
def dataset(tmp_path) -> Path:
    """A small valid synthetic set (VAP-Data layout) to which tests add bad rows."""
    synthesize(str(tmp_path), conditions_per_category=1, clips_per_condition=2, frames=5, progress=False)
    return tmp_path


def _rows(root: Path) -> list[dict]:
    with open(root / "metadata.csv", newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(root: Path, rows: list[dict], columns=CSV_COLUMNS) -> None:
    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _add_rows(root: Path, *rows: dict, columns=CSV_COLUMNS) -> None:
    good = _rows(root)
    template = {**good[0], "ref_video_paths": "[]"}
    _write_rows(root, good + [{**template, **r} for r in rows], columns)


def _zero_frame_mp4(path: Path) -> None:
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=8)
    stream.width = stream.height = 32
    stream.pix_fmt = "yuv420p"
    container.start_encoding()  # header written, no frame ever muxed
    container.close()


def _faststart_mp4(path: Path) -> None:
    """An mp4 with its index first, as streaming sites serve them: cutting it leaves a readable header."""
    frames, _ = render_clip("bounce", 0, 0, frames=17, size=32)
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=8, options={"qp": "18"})
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def test_reads_the_synthetic_set_in_vap_data_layout(dataset, monkeypatch):
    result = ingest(str(dataset), progress=False)
    assert len(result.clips) == N_GOOD and result.rejected == []
    rows = {r["video_paths"]: r for r in _rows(dataset)}
    for clip in result.clips:
        row = rows[clip.id + ".mp4"]
        assert clip.uri == str(dataset / row["video_paths"])
        assert (clip.caption, clip.condition) == (row["tar_video_caption"], row["kind"])
        assert clip.category in ("concept", "style", "motion", "camera")
        assert clip.alignment_score == float(row["reference_alignment_score"])
        assert clip.refs == tuple(r[:-4] for r in json.loads(row["ref_video_paths"]))
    assert {c.category for c in result.clips} == {"concept", "style", "motion", "camera"}
    # The manifest file itself is an accepted source too, also as a relative path.
    assert len(ingest(str(dataset / "metadata.csv"), progress=False).clips) == N_GOOD
    monkeypatch.chdir(dataset)
    assert [c.uri for c in ingest("metadata.csv", progress=False).clips] == [c.uri for c in result.clips]


def test_each_bad_clip_is_quarantined_with_its_reason_and_nothing_else_is_lost(dataset):
    good = (dataset / "videos" / sorted(p.name for p in (dataset / "videos").iterdir())[0]).read_bytes()
    (dataset / "bad").mkdir()
    (dataset / "bad" / "truncated.mp4").write_bytes(good[: len(good) // 2])
    _faststart_mp4(dataset / "bad" / "faststart.mp4")
    whole = (dataset / "bad" / "faststart.mp4").read_bytes()
    (dataset / "bad" / "cut_faststart.mp4").write_bytes(whole[: int(len(whole) * 0.9)])
    _zero_frame_mp4(dataset / "bad" / "zero.mp4")
    (dataset / "bad" / "notes.mp4").write_text("this is a text file, not a video\n")
    (dataset / "bad" / "empty.mp4").write_bytes(b"")
    ok = "videos/" + sorted(p.name for p in (dataset / "videos").iterdir())[0]
    _add_rows(
        dataset,
        {"video_paths": "bad/truncated.mp4"},
        {"video_paths": "bad/cut_faststart.mp4"},
        {"video_paths": "bad/zero.mp4"},
        {"video_paths": "bad/notes.mp4"},
        {"video_paths": "bad/empty.mp4"},
        {"video_paths": "videos/does_not_exist.mp4"},
        {"video_paths": "bad/faststart.mp4", "tar_video_caption": ""},
        {"video_paths": "bad/faststart.mp4", "tar_video_caption": "   "},
        {"video_paths": "bad/faststart.mp4", "kind": ""},
        {"video_paths": "bad/faststart.mp4", "kind": "my_own_effect"},
        {"video_paths": "bad/faststart.mp4", "reference_alignment_score": "high"},
        {"video_paths": ok},  # listed twice
    )
    result = ingest(str(dataset), progress=False)

    # a condition without a known category costs nothing: the row is kept, uncategorized
    assert len(result.clips) == N_GOOD + 1
    assert [c.category for c in result.clips if c.condition == "my_own_effect"] == ["uncategorized"]
    by_row = {r.source.split(":row ")[1]: r for r in result.rejected}
    first_bad = N_GOOD + 2  # header is row 1
    expected = {0: "truncated", 1: "truncated", 2: "no_frames", 3: "not_a_video", 4: "empty_file",
                5: "missing_file", 6: "missing_caption", 7: "missing_caption", 8: "missing_condition",
                10: "bad_alignment_score", 11: "duplicate"}
    assert {int(k): r.reason for k, r in by_row.items()} == {first_bad + i: e for i, e in expected.items()}
    assert result.reasons() == {
        "bad_alignment_score": 1, "duplicate": 1, "empty_file": 1, "missing_caption": 2, "missing_condition": 1,
        "missing_file": 1, "no_frames": 1, "not_a_video": 1, "truncated": 2,
    }
    for r in result.rejected:  # each message names the row and says what to do
        assert r.detail.startswith(f"metadata.csv:row {r.source.split(':row ')[1]}: ")
    assert "bad/notes.mp4" in by_row[str(first_bad + 3)].detail
    assert "only" in by_row[str(first_bad + 1)].detail and "of 17 frames" in by_row[str(first_bad + 1)].detail


def test_category_from_a_column_or_a_categories_file(dataset):
    _faststart_mp4(dataset / "extra.mp4")
    columns = (*CSV_COLUMNS, "category")
    _add_rows(dataset, {"video_paths": "extra.mp4", "kind": "my_own_effect", "category": "Style"}, columns=columns)
    clips = {c.id: c for c in ingest(str(dataset), progress=False).clips}
    assert clips["extra"].category == "style" and len(clips) == N_GOOD + 1

    _add_rows(dataset, {"video_paths": "extra.mp4", "kind": "my_own_effect", "category": "lighting"}, columns=columns)
    # Labels are checked before duplicates: the bad row is reported for its label.
    assert ingest(str(dataset), progress=False).reasons() == {"bad_category": 1}

    rows = [r for r in _rows(dataset) if r["video_paths"] != "extra.mp4"]
    _write_rows(dataset, rows + [{**rows[0], "video_paths": "extra.mp4", "kind": "my_own_effect"}])
    result = ingest(str(dataset), progress=False)
    assert result.reasons() == {} and {c.id: c for c in result.clips}["extra"].category == "uncategorized"
    (dataset / "categories.json").write_text(json.dumps({"my_own_effect": "camera"}))
    clips = {c.id: c for c in ingest(str(dataset), progress=False).clips}
    assert clips["extra"].category == "camera"


def test_clip_limits_and_alignment_threshold(dataset):
    scores = sorted(float(r["reference_alignment_score"]) for r in _rows(dataset))
    result = ingest(str(dataset), min_alignment=scores[2], progress=False)  # the authors' rule: keep > it
    assert result.reasons() == {"low_alignment": 3} and len(result.clips) == N_GOOD - 3
    assert ingest(str(dataset), min_frames=6, progress=False).reasons() == {"too_few_frames": N_GOOD}
    assert ingest(str(dataset), min_fps=10, progress=False).reasons() == {"low_fps": N_GOOD}
    assert ingest(str(dataset), min_size=48, progress=False).reasons() == {"too_small": N_GOOD}
    info = probe(str(dataset / _rows(dataset)[0]["video_paths"]))
    assert (info.frames, info.fps, info.width, info.height, info.duration) == (5, 8.0, 32, 32, 5 / 8)


def test_references_missing_from_disk_are_reported_and_the_target_kept(dataset):
    rows = _rows(dataset)
    rows[0]["ref_video_paths"] = json.dumps([rows[1]["video_paths"], "videos/gone.mp4"])
    # VAP-Data's own files sometimes hold a Python list literal instead of JSON.
    rows[1]["ref_video_paths"] = str([rows[0]["video_paths"]])
    _write_rows(dataset, rows)
    result = ingest(str(dataset), progress=False)
    clips = {c.id: c for c in result.clips}
    first, second = rows[0]["video_paths"][:-4], rows[1]["video_paths"][:-4]
    assert len(clips) == N_GOOD and clips[first].refs == (second,) and clips[second].refs == (first,)
    assert sorted((r.source, r.reason) for r in result.rejected) == [("metadata.csv:row 2", "missing_reference")]
    assert "videos/gone.mp4" in result.rejected[0].detail


def test_a_bad_reference_clip_is_dropped_from_refs(dataset):
    rows = _rows(dataset)
    (dataset / rows[1]["video_paths"]).write_text("garbage")
    result = ingest(str(dataset), progress=False)
    clips = {c.id: c for c in result.clips}
    assert result.reasons() == {"not_a_video": 1}
    assert clips[rows[0]["video_paths"][:-4]].refs == ()


def test_csv_missing_a_column_raises_naming_it(dataset):
    rows = _rows(dataset)
    _write_rows(dataset, rows, columns=[c for c in CSV_COLUMNS if c != "kind"])
    with pytest.raises(DataError, match=r"metadata.csv: missing column\(s\) kind"):
        ingest(str(dataset), progress=False)


def test_no_manifest_or_several_raise_with_the_fix(tmp_path):
    with pytest.raises(DataError, match="no such folder, or it is empty"):
        ingest(str(tmp_path / "missing"), progress=False)
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"")
    with pytest.raises(DataError, match="no metadata.csv, .* manifest in this folder; .* JSONL manifest"):
        ingest(str(tmp_path), progress=False)
    with pytest.raises(DataError, match="manifest not found"):
        ingest(str(tmp_path / "nope.csv"), progress=False)
    (tmp_path / "a.jsonl").write_text("")
    (tmp_path / "b.jsonl").write_text("")
    with pytest.raises(DataError, match="several manifests"):
        ingest(str(tmp_path), progress=False)


def test_jsonl_manifest_for_users_own_clips(dataset):
    clips = _rows(dataset)
    lines = [json.dumps({"video": str(dataset / r["video_paths"]), "caption": r["tar_video_caption"],
                         "condition": "wobble", "category": "motion"}) for r in clips[:3]]
    lines += ["{not json", json.dumps({"video": str(dataset / clips[3]["video_paths"]), "caption": "x",
                                       "condition": "wobble"}), "", json.dumps(["a", "list"])]
    manifest = dataset / "mine" / "clips.jsonl"
    manifest.parent.mkdir()
    manifest.write_text("\n".join(lines) + "\n")
    result = ingest(str(manifest.parent), clip_root=str(dataset), progress=False)  # clips beside mine/
    # the line without a category takes the one other lines give its condition
    assert [c.condition for c in result.clips] == ["wobble"] * 4 and {c.category for c in result.clips} == {"motion"}
    assert sorted((r.source, r.reason) for r in result.rejected) == [
        ("clips.jsonl:line 4", "bad_manifest_line"), ("clips.jsonl:line 7", "bad_manifest_line")]


def test_ingest_from_s3_with_a_missing_object(s3_bucket):
    source = f"{s3_bucket}/vap-data"
    synthesize(source, conditions_per_category=1, clips_per_condition=2, frames=5, progress=False)
    text = storage.read_bytes(f"{source}/metadata.csv").decode()
    row = text.splitlines()[1].replace("videos/", "videos/missing_", 1)
    storage.write_bytes(f"{source}/metadata.csv", (text + row + "\n").encode())
    storage.write_bytes(f"{source}/videos/not_a_video.mp4", b"text")
    result = ingest(source, progress=False)
    assert len(result.clips) == N_GOOD and all(c.uri.startswith(f"{source}/videos/") for c in result.clips)
    assert result.reasons() == {"missing_file": 1}
    assert check_clip(f"{source}/videos/not_a_video.mp4")[1][0] == "not_a_video"


def test_unreachable_s3_endpoint_raises_storage_error(monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(StorageError, match="cannot reach S3 endpoint http://127.0.0.1"):
        ingest("s3://vap-data/raw", progress=False)
    with pytest.raises(StorageError, match="cannot reach"):
        check_clip("s3://vap-data/raw/videos/a.mp4")
