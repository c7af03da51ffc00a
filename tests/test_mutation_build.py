"""`datasets/build.py` pinned down piece by piece, fast enough to run once per mutant (`make mutate`,
docs/TESTING.md): which clip's arrays land in which columns, how parts are cut, resumed and
checked, what the clip cache encodes, what a snapshot id covers, which clips are quarantined,
and one real build whose index, null text and every stored array are checked.

Oracles: arrays tagged with their clip's number (a fake encoder), counts and ids worked out by
the test from the clips it wrote, sha1 of the shard files computed here, and for the real build
each clip decoded and encoded on its own with `read_clip` / `ClipEncoder` (datasets/encode.py,
not the code under test).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from vap.datasets import build as build_mod
from vap.datasets import snapshot as snap
from vap.datasets.build import Inputs, build_snapshot, identify, read_inputs
from vap.datasets.encode import ClipEncoder, clip_duration, read_clip
from vap.datasets.records import Clip, IngestResult, Pair
from vap.datasets.synth import encode_mp4, synthesize
from vap.errors import DataError
from vap.spec import parse_spec


def make_spec(backbone, source, shards, family="cogvideox", **data):
    data = {"source": None if source is None else str(source), "shards": str(shards), "frames": 5, "fps": 8.0,
            "val_fraction": 0.0, "unseen_conditions": 1, "pairs_per_part": 4, **data}
    return parse_spec({"name": "t", "model": {"family": family, "backbone": str(backbone)}, "data": data,
                       "storage": {"uri": "/tmp/unused"}, "registry": {"tracking_uri": "sqlite:////tmp/unused.db"}})


def clip(n: int, condition: str = "c0", **fields) -> Clip:
    return Clip(id=f"v{n}", uri=f"/data/v{n}.mp4", caption=f"caption {n}", condition=condition,
                category=fields.pop("category", "motion"), **fields)


class TaggedCache:
    """`_ClipCache`'s interface; every array of clip vN is filled with N (+0.25 for the image latent)."""

    def __init__(self, image_embed: bool = False):
        self.image_embed, self.asked = image_embed, []

    def get(self, c: Clip) -> dict:
        self.asked.append(c.id)
        n = float(c.id[1:])
        cols = {"latent": np.full((2, 3, 2, 2), n, np.float16), "image_latent": np.full((2, 1, 2, 2), n + 0.25, np.float16),
                "text": np.full((4, 3), n, np.float16)}
        if self.image_embed:
            cols["image_embed"] = np.full((5, 3), n, np.float16)
        return cols


def read_split(split: Path) -> list[dict]:
    """Every sample of a split, read with MosaicML Streaming itself."""
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    ds = StreamingDataset(local=str(split), remote=None, shuffle=False, batch_size=1)
    return [ds[i] for i in range(len(ds))]


# --- _sample: which clip fills which column ---------------------------------------------------

def test_a_sample_holds_the_targets_arrays_as_target_and_the_references_as_reference():
    pair = Pair(clip(1, category="style"), clip(2), "train")
    sample = build_mod._sample(pair, TaggedCache())
    assert sorted(sample) == sorted(["pair_id", "condition", "category", "target_caption", "reference_caption",
                                     "target_latent", "target_image_latent", "target_text",
                                     "reference_latent", "reference_image_latent", "reference_text"])
    assert (sample["pair_id"], sample["condition"], sample["category"]) == ("v1<-v2", "c0", "style")
    assert (sample["target_caption"], sample["reference_caption"]) == ("caption 1", "caption 2")
    for name, offset in (("latent", 0), ("image_latent", 0.25), ("text", 0)):
        assert np.all(sample[f"target_{name}"] == 1 + offset) and np.all(sample[f"reference_{name}"] == 2 + offset)


def test_candidates_are_stacked_in_order_with_their_captions():
    pair = Pair(clip(1), clip(3), "train", candidates=(clip(3), clip(2), clip(4)))
    sample = build_mod._sample(pair, TaggedCache(image_embed=True), candidates=True)
    assert sample["reference_candidates"] == 3
    assert json.loads(sample["reference_caption"]) == ["caption 3", "caption 2", "caption 4"]
    for name, shape in (("latent", (3, 2, 3, 2, 2)), ("image_latent", (3, 2, 1, 2, 2)), ("text", (3, 4, 3)),
                        ("image_embed", (3, 5, 3))):
        stacked = sample[f"reference_{name}"]
        assert stacked.shape == shape
        assert [float(np.unique(s - (0.25 if name == "image_latent" else 0))[0]) for s in stacked] == [3, 2, 4]
    assert np.all(sample["target_latent"] == 1)


def test_several_references_are_laid_along_time_and_tokens():
    # m = 2 of 3 candidates: latents along frames (axis 1 of [C, F, h, w]), text and CLIP tokens along axis 0
    pair = Pair(clip(1), clip(2), "train", candidates=(clip(2), clip(3), clip(4)))
    sample = build_mod._sample(pair, TaggedCache(image_embed=True), m=2)
    assert "reference_candidates" not in sample
    assert json.loads(sample["reference_caption"]) == ["caption 2", "caption 3"]
    want = {"latent": (1, (2, 6, 2, 2)), "image_latent": (1, (2, 2, 2, 2)), "text": (0, (8, 3)), "image_embed": (0, (10, 3))}
    for name, (axis, shape) in want.items():
        got = sample[f"reference_{name}"]
        assert got.shape == shape, name
        first, second = np.split(got, 2, axis=axis)
        offset = 0.25 if name == "image_latent" else 0
        assert np.all(first == 2 + offset) and np.all(second == 3 + offset), name


# --- _write_split: parts, resume, a short part --------------------------------------------------

COLS = snap.columns(with_image_embed=False)


def pairs_of(n: int) -> list[Pair]:
    return [Pair(clip(2 * i + 1), clip(2 * i + 2), "train") for i in range(n)]


def test_a_split_is_written_in_parts_of_per_part_pairs(tmp_path):
    advanced = []
    shards = build_mod._write_split(str(tmp_path / "train"), pairs_of(5), 2, COLS, TaggedCache(), advanced.append)
    assert advanced == [2, 2, 1]
    assert sorted(p.name for p in (tmp_path / "train").glob("part-*")) == ["part-00000", "part-00001", "part-00002"]
    for i, n in enumerate([2, 2, 1]):
        assert json.loads((tmp_path / "train" / snap.part_name(i) / snap.PART_DONE).read_text()) == {"samples": n}
    assert sum(s["samples"] for s in shards) == 5
    samples = read_split(tmp_path / "train")
    assert [s["pair_id"] for s in samples] == [f"v{2 * i + 1}<-v{2 * i + 2}" for i in range(5)]
    for s in samples:
        target, reference = (float(x[1:]) for x in s["pair_id"].split("<-"))
        assert np.all(s["target_latent"] == target) and np.all(s["reference_text"] == reference)


def test_no_pairs_writes_nothing(tmp_path):
    assert build_mod._write_split(str(tmp_path / "val"), [], 2, COLS, TaggedCache(), pytest.fail) == []
    assert not (tmp_path / "val").exists()


def test_a_finished_part_is_skipped_and_the_rest_written(tmp_path, caplog):
    split = str(tmp_path / "train")
    build_mod._write_split(split, pairs_of(3), 2, COLS, TaggedCache(), lambda n: None)
    (tmp_path / "train" / "part-00001" / snap.PART_DONE).unlink()  # as if killed while writing part 1
    cache, advanced = TaggedCache(), []
    with caplog.at_level(logging.INFO, logger=build_mod.log.name):
        build_mod._write_split(split, pairs_of(3), 2, COLS, cache, advanced.append)
    assert cache.asked == ["v5", "v6"]  # only part 1's pair was encoded again
    assert advanced == [2, 1]  # the skipped part still counts towards the progress bar
    assert f"{split}/part-00000 already written: skipped" in caplog.messages
    assert len(read_split(tmp_path / "train")) == 3


def test_a_part_written_short_is_an_error_naming_it(tmp_path, monkeypatch):
    real = snap.write_part
    monkeypatch.setattr(snap, "write_part", lambda uri, i, samples, cols: real(uri, i, list(samples)[:1], cols))
    split = str(tmp_path / "train")
    with pytest.raises(DataError) as err:
        build_mod._write_split(split, pairs_of(2), 2, COLS, TaggedCache(), lambda n: None)
    assert str(err.value) == f"{split}/part-00000: wrote 1 of 2 pairs; re-run the build to rewrite the part"


# --- _ClipCache: each clip encoded once, the least recently used evicted ----------------------

class CountingEncoder:
    def __init__(self):
        self.videos, self.captions = [], []

    def encode_clip(self, video):
        self.videos.append(video)
        return {"latent": video.astype(np.float16)}

    def encode_text(self, captions):
        self.captions.append(captions)
        return np.full((1, 2, 2), len(self.captions), np.float16)


@pytest.fixture(scope="module")
def mp4s(tmp_path_factory) -> dict[str, Path]:
    """Four 12-frame clips at 8 fps, 24×40, each frame a different grey per clip and time."""
    out = tmp_path_factory.mktemp("mp4")
    files = {}
    for n in range(1, 5):
        frames = np.stack([np.full((24, 40, 3), 10 * n + 5 * t, np.uint8) for t in range(12)])
        files[f"v{n}"] = out / f"v{n}.mp4"
        files[f"v{n}"].write_bytes(encode_mp4(frames, 8.0))
    return files


def test_the_cache_encodes_each_clip_once_and_evicts_the_least_recently_used(tiny_backbones, mp4s, tmp_path):
    spec = make_spec(tiny_backbones["cogvideox"], None, tmp_path, frames=5, fps=4.0, height=16, width=24,
                     time_window="head")
    clips = {k: Clip(k, str(p), f"caption of {k}", "c", "motion") for k, p in mp4s.items()}
    encoder = CountingEncoder()
    cache = build_mod._ClipCache(encoder, spec.data, size=2)
    order = ["v1", "v2", "v1", "v3", "v1", "v2"]  # v3 evicts v2 (v1 was used since); v2 comes back
    got = [cache.get(clips[k]) for k in order]
    assert cache.encoded == len(encoder.videos) == 4
    assert encoder.captions == [["caption of v1"], ["caption of v2"], ["caption of v3"], ["caption of v2"]]
    assert got[0] is got[2] is got[4] and list(cache.items) == ["v1", "v2"]
    for k, video in zip(["v1", "v2", "v3", "v2"], encoder.videos, strict=True):
        want = read_clip(mp4s[k].read_bytes(), frames=5, fps=4.0, height=16, width=24, window="head")
        np.testing.assert_array_equal(video, want)
    assert np.all(got[1]["text"] == 2) and got[1]["text"].shape == (2, 2)  # the caption's own embedding


# --- identify: what a snapshot id covers -------------------------------------------------------

def test_the_snapshot_id_covers_every_clip_label_every_setting_and_the_rejected(tiny_backbones, tmp_path):
    from vap.datasets.records import Rejected

    backbone = build_mod.backbone_folder(str(tiny_backbones["cogvideox"]))
    base = {"split": "train", "alignment_score": 50.0, "refs": ("v2",)}

    def sid(clip_fields=None, digest="d1", rejected=(), **data):
        spec = make_spec(tiny_backbones["cogvideox"], tmp_path, tmp_path / "shards", **data)
        c = replace(clip(1, **base), **(clip_fields or {}))
        result = IngestResult([c, clip(2)], list(rejected))
        return identify(spec, Inputs(result, {c.id: digest, "v2": "d2"}, {}), backbone)

    first, settings = sid()
    assert first == sid()[0] and len(first) == 16
    # the id's layout written out (ids must stay stable: a renamed key would rebuild every snapshot)
    labels = [{"id": "v1", "sha256": "d1", "caption": "caption 1", "condition": "c0", "category": "motion",
               "split": "train", "alignment": 50.0, "refs": ["v2"]},
              {"id": "v2", "sha256": "d2", "caption": "caption 2", "condition": "c0", "category": "motion",
               "split": "train", "alignment": None, "refs": []}]
    identity = build_mod.backbone_identity(str(tiny_backbones["cogvideox"]), backbone)
    assert first == snap.snapshot_id(labels, {"data": settings["data"], "family": "cogvideox",
                                              "backbone": identity, "rejected": []})
    want_data = {"frames": 5, "fps": 8.0, "time_window": "evenly", "height": 32, "width": 32, "text_len": None,
                 "min_alignment": 10.0, "seed": 0, "refs_per_target": 1, "reference_candidates": 4,
                 "references_per_pair": 1, "val_fraction": 0.0, "unseen_conditions": 1, "pairs_per_part": 4}
    assert settings["data"] == want_data and settings["family"] == "cogvideox" and settings["rejected"] == []
    changed = {"frames": 9, "fps": 4.0, "time_window": "head", "height": 16, "width": 16, "text_len": 8,
               "min_alignment": 20.0, "seed": 1, "refs_per_target": 2, "reference_candidates": 2,
               "references_per_pair": 2, "val_fraction": 0.5, "unseen_conditions": 0, "pairs_per_part": 2}
    assert set(changed) == set(want_data)
    for key, value in changed.items():
        assert sid(**{key: value})[0] != first, key
    for field, value in {"id": "v9", "caption": "other", "condition": "c9", "category": "style", "split": "val",
                         "alignment_score": 51.0, "refs": ("v3",)}.items():
        assert sid({field: value})[0] != first, field
    assert sid(digest="d9")[0] != first
    assert sid(rejected=[Rejected("/data/x.mp4", "undecodable", "x")])[0] != first
    wan = identify(make_spec(tiny_backbones["wan"], tmp_path, tmp_path / "s", family="wan"),
                   Inputs(IngestResult([clip(1, **base), clip(2)]), {"v1": "d1", "v2": "d2"}, {}),
                   build_mod.backbone_folder(str(tiny_backbones["wan"])))[0]
    assert wan != first


def test_the_backbone_identity_reads_configs_whole_and_weights_by_size(tmp_path):
    folder = tmp_path / "bb"
    (folder / "vae").mkdir(parents=True)
    (folder / "vae" / "config.json").write_text('{"a": 1}')
    (folder / "vae" / "model.safetensors").write_bytes(b"x" * 10)
    (folder / "tokenizer.model").write_bytes(b"sp")
    (folder / "notes.txt").write_text("n")

    def ident():
        return build_mod.backbone_identity("name", folder)

    first = ident()
    assert first["name"] == "name" and len(first["files"]) == 16
    (folder / ".cache").write_text("hidden files do not count")
    (folder / "sub").mkdir()  # nor folders themselves
    assert ident() == first
    (folder / "vae" / "model.safetensors").write_bytes(b"y" * 10)  # same size: the weights are not read
    assert ident() == first
    for path, content in (("vae/model.safetensors", b"y" * 11), ("vae/config.json", b'{"a": 2}'),
                          ("tokenizer.model", b"sq"), ("notes.txt", b"m")):
        before = ident()
        (folder / path).write_bytes(content)
        assert ident() != before, path
    before = ident()
    (folder / "notes.txt").rename(folder / "renamed.txt")
    assert ident() != before


# --- _hash_clips: too short for the spec is quarantined ---------------------------------------

def test_a_clip_exactly_as_long_as_the_spec_needs_is_too_short_one_frame_more_is_kept(tmp_path):
    # frames = 5 at 8 fps sample t = 0 … 0.5 s, and the frame at 0.5 s must be on screen: a clip of
    # 4 frames (0.500 s long) is too short, one of 5 (0.625 s) is long enough
    files = {}
    for n, frames in ((1, 4), (2, 5)):
        files[n] = tmp_path / f"v{n}.mp4"
        files[n].write_bytes(encode_mp4(np.zeros((frames, 16, 16, 3), np.uint8), 8.0))
    assert clip_duration(files[1].read_bytes()) == pytest.approx(0.5)
    result = IngestResult([Clip(f"v{n}", str(p), "c", "k", "motion") for n, p in files.items()])
    digests = build_mod._hash_clips(result, (5 - 1) / 8.0, progress=False)
    assert digests == {"v2": hashlib.sha256(files[2].read_bytes()).hexdigest()}
    assert [c.id for c in result.clips] == ["v2"]
    [rejected] = result.rejected
    assert (rejected.source, rejected.reason) == (str(files[1]), "too_short")
    assert rejected.detail == (f"{files[1]}: 0.50s long, the spec's frames and fps need more than 0.50s; "
                               "use longer clips or lower data.frames")


# --- read_inputs --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """4 conditions (one per category) × 3 clips of 9 frames at 8 fps, 32×32."""
    out = tmp_path_factory.mktemp("src")
    synthesize(str(out), conditions_per_category=1, clips_per_condition=3, frames=9, fps=8.0, size=32, progress=False)
    return out


def test_read_inputs_without_a_source_names_the_setting(tiny_backbones, tmp_path):
    with pytest.raises(DataError) as err:
        read_inputs(make_spec(tiny_backbones["cogvideox"], None, tmp_path), progress=False)
    assert str(err.value) == ("data.source is not set: point it at the raw clips (a folder or s3:// prefix with "
                              "metadata.csv), e.g. one written by `vap data synth`")


def test_read_inputs_with_no_usable_clip_says_why_and_writes_the_quarantine(tiny_backbones, source, tmp_path):
    shards = tmp_path / "shards"
    spec = make_spec(tiny_backbones["cogvideox"], source, shards, frames=17)  # 9-frame clips are all too short
    with pytest.raises(DataError) as err:
        read_inputs(spec, progress=False)
    assert str(err.value) == (f"{source}: no usable clips ({{'too_short': 12}}); fix the input (every row and its "
                              f"reason: {shards}/quarantine/quarantine.csv)")
    assert (shards / "quarantine" / "quarantine.csv").read_text().count("too_short") == 12


def test_pairs_short_of_references_are_left_out_with_a_warning(tiny_backbones, source, tmp_path, caplog):
    # 3 clips a condition: a target has 2 others, so 3 references per pair leaves every pair out and 2 keeps all
    spec = make_spec(tiny_backbones["cogvideox"], source, tmp_path, references_per_pair=2, reference_candidates=1)
    kept = read_inputs(spec, progress=False)
    assert {s: len(p) for s, p in kept.pairs.items()} == {"train": 9, "val": 0, "unseen": 3}
    assert all(len(p.references) == 2 for ps in kept.pairs.values() for p in ps)  # candidates = max(m, 1)
    spec = make_spec(tiny_backbones["cogvideox"], source, tmp_path, references_per_pair=3, reference_candidates=1)
    with caplog.at_level(logging.WARNING, logger=build_mod.log.name):
        none = read_inputs(spec, progress=False)
    assert none.pairs == {"train": [], "val": [], "unseen": []}
    assert caplog.messages == ["pairs left out, fewer than 3 references in their condition: "
                               "{'train': 9, 'val': 0, 'unseen': 3}"]
    single = read_inputs(make_spec(tiny_backbones["cogvideox"], source, tmp_path, reference_candidates=3), progress=False)
    assert all(len(p.references) == 2 for p in single.pairs["train"])  # 3 wanted, 2 others in the condition


def test_wan_with_two_references_is_refused_naming_the_limit(tiny_backbones, tmp_path, monkeypatch):
    monkeypatch.setattr(build_mod, "ingest", lambda *a, **k: pytest.fail("must not validate clips"))
    spec = make_spec(tiny_backbones["wan"], tmp_path, tmp_path / "s", family="wan", references_per_pair=2)
    with pytest.raises(DataError) as err:
        build_snapshot(spec, progress=False)
    assert str(err.value) == ("data.references_per_pair = 2, but a wan expert takes 1 reference (the authors' "
                              "model supports one); set it to 1")


# --- one real build -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real(tiny_backbones, source, tmp_path_factory):
    """The source plus one clip too short for the spec (4 frames: 0.5 s), built for CogVideoX over
    what an interrupted build left at the snapshot's place (a folder without index.json).

    Module-scoped, so mutmut counts the build towards the first test that asks for it only: the
    checks of the build itself are therefore one test, `test_a_real_build_...`."""
    import shutil

    src = tmp_path_factory.mktemp("real") / "src"
    shutil.copytree(source, src)
    short = sorted((src / "videos").iterdir())[0]
    short.write_bytes(encode_mp4(np.zeros((4, 32, 32, 3), np.uint8), 8.0))
    shards = src.parent / "shards"
    spec = make_spec(tiny_backbones["cogvideox"], src, shards, reference_candidates=2)
    sid, _ = identify(spec, read_inputs(spec, progress=False), build_mod.backbone_folder(spec.model.backbone))
    (shards / sid / "train").mkdir(parents=True)  # not a snapshot yet: it must be built, not reused
    import io

    import rich
    from rich.console import Console

    screen = io.StringIO()  # the bars drawn on a terminal: the encoding bar counts the pairs
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rich, "_console", Console(file=screen, force_terminal=True, width=120))
        built = build_snapshot(spec)
    REAL_SCREEN[sid] = screen.getvalue()
    return spec, built, short


REAL_SCREEN: dict[str, str] = {}


def oracle_columns(encoder: ClipEncoder, spec, mp4: Path, caption: str) -> dict[str, np.ndarray]:
    d = spec.data
    video = read_clip(mp4.read_bytes(), frames=d.frames, fps=d.fps, height=d.height, width=d.width)
    return {**encoder.encode_clip(video), "text": encoder.encode_text([caption])[0]}


def test_a_real_build_index_null_text_and_every_array(real, tiny_backbones):
    _, built, _ = real
    assert f"encoding pairs into {built.id}" in REAL_SCREEN[built.id] and "11/11" in REAL_SCREEN[built.id]
    check_the_index(real)
    check_every_array(real, tiny_backbones)


def check_the_index(real):
    import csv

    spec, built, short = real
    root = Path(spec.data.shards) / built.id
    index = json.loads((root / "index.json").read_text())
    rows = list(csv.DictReader((Path(spec.data.source) / "metadata.csv").open()))
    assert (Path(spec.data.shards) / "LATEST").read_text().strip() == built.id == index["id"]
    assert (index["schema"], index["source"], index["family"], index["backbone"]) == (
        snap.SCHEMA, spec.data.source, "cogvideox", spec.model.backbone)
    assert index["clips"] == len(rows) - 1 and index["rejected"] == {"too_short": 1}
    assert short.name in (root / "report" / "quarantine.csv").read_text()
    assert index["text_len"] == 16 and len(index["build"]) == 32 and index["created"].endswith("Z")
    encoded: set[str] = set()
    for split in snap.SPLITS:
        samples = read_split(root / split) if (root / split).exists() else []
        by_condition: dict[str, int] = {}
        for s in samples:
            by_condition[s["condition"]] = by_condition.get(s["condition"], 0) + 1
            encoded |= set(s["pair_id"].split("<-"))
        assert index["counts"][split]["pairs"] == len(samples) and index["counts"][split]["by_condition"] == by_condition
        files = sorted((root / split).rglob("*.mds.zstd")) if samples else []
        assert [(h["file"], h["sha1"], h["samples"]) for h in index["shards"][split]] == [
            (str(f.relative_to(root / split)), hashlib.sha1(f.read_bytes()).hexdigest(),
             json.loads((f.parent / "index.json").read_text())["shards"][0]["samples"]) for f in files]
    # 11 clips left in 4 conditions: the short clip's condition pairs its 2 others, each with the other
    assert sum(index["counts"][s]["pairs"] for s in snap.SPLITS) == 11 and index["encoded_clips"] == len(encoded) == 11
    assert not built.reused  # (its index is re-read: a forced rebuild by another test rewrites it)


def check_every_array(real, tiny_backbones):
    """Each stored array is its own clip's encoding, the candidates in their order."""
    import csv

    spec, built, short = real
    rows = {r["video_paths"].rsplit(".", 1)[0]: r for r in csv.DictReader((Path(spec.data.source) / "metadata.csv").open())}
    rows.pop(f"videos/{short.stem}")  # quarantined
    encoder = ClipEncoder.from_pretrained("cogvideox", tiny_backbones["cogvideox"])
    root = Path(spec.data.shards) / built.id
    np.testing.assert_array_equal(np.load(root / "null_text.npy"), encoder.encode_text([""])[0])
    want: dict[str, dict] = {}

    def columns_of(clip_id: str) -> dict:
        if clip_id not in want:
            want[clip_id] = oracle_columns(encoder, spec, Path(spec.data.source) / rows[clip_id]["video_paths"],
                                           rows[clip_id]["tar_video_caption"])
        return want[clip_id]

    for split in ("train", "unseen"):
        for s in read_split(root / split):
            target, reference = s["pair_id"].split("<-")
            row = rows[target]
            assert (s["condition"], s["target_caption"]) == (row["kind"], row["tar_video_caption"])
            # the candidates: the pair's reference first, then the condition's other clips, 2 at most
            others = {rows[k]["tar_video_caption"]: k for k in rows if rows[k]["kind"] == row["kind"] and k != target}
            assert len(others) == sum(rows[k]["kind"] == row["kind"] for k in rows) - 1  # captions tell them apart
            captions = json.loads(s["reference_caption"])
            assert s["reference_candidates"] == len(captions) == min(2, len(others))
            assert others[captions[0]] == reference
            for name, value in columns_of(target).items():
                np.testing.assert_array_equal(s[f"target_{name}"], value, err_msg=f"{s['pair_id']} target_{name}")
            for i, caption in enumerate(captions):
                for name, value in columns_of(others[caption]).items():
                    np.testing.assert_array_equal(s[f"reference_{name}"][i], value,
                                                  err_msg=f"{s['pair_id']} reference_{name}[{i}]")


def test_a_second_build_finds_the_snapshot_and_force_builds_it_again(real, monkeypatch, caplog):
    spec, built, _ = real
    monkeypatch.setattr(build_mod, "ingest", lambda *a, **k: pytest.fail("an unchanged source is not read again"))
    (Path(spec.data.shards) / "LATEST").write_text("elsewhere")
    with caplog.at_level(logging.INFO, logger=build_mod.log.name):
        again = build_snapshot(spec, progress=False)
    assert again.reused and again.id == built.id and again.index["build"] == built.index["build"]
    assert caplog.messages == [f"{spec.data.source} is unchanged since snapshot {built.id} was built: nothing to do"]
    assert (Path(spec.data.shards) / "LATEST").read_text().strip() == built.id
    monkeypatch.undo()
    # touched, same bytes: the quick key misses, the clips are validated and hashed, the id is found
    import os

    clip_file = sorted((Path(spec.data.source) / "videos").iterdir())[-1]
    st = clip_file.stat()
    os.utime(clip_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    monkeypatch.setattr(ClipEncoder, "from_pretrained", lambda *a, **k: pytest.fail("the same inputs are not encoded"))
    (Path(spec.data.shards) / "LATEST").write_text("elsewhere")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=build_mod.log.name):
        found = build_snapshot(spec, progress=False)
    assert found.reused and found.id == built.id and found.index["build"] == built.index["build"]
    assert caplog.messages == [f"snapshot {built.id} already built from these inputs: nothing to do"]
    assert (Path(spec.data.shards) / "LATEST").read_text().strip() == built.id
    monkeypatch.setattr(build_mod, "ingest", lambda *a, **k: pytest.fail("remembered under the new key"))
    assert build_snapshot(spec, progress=False).reused
    monkeypatch.undo()
    (Path(spec.data.shards) / "LATEST").write_text("elsewhere")
    shard = sorted((Path(built.uri) / "train").rglob("*.mds.zstd"))[0]
    rotten = bytearray(shard.read_bytes())
    rotten[len(rotten) // 2] ^= 0xFF
    shard.write_bytes(bytes(rotten))  # what --force is for: the old snapshot is removed, every part written again
    for memo in (Path(spec.data.shards) / "sources").iterdir():
        memo.unlink()  # a forced build remembers its source afresh
    import datetime
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")  # 9 hours from UTC: a local-time stamp would show
    time.tzset()
    caplog.clear()
    try:
        with caplog.at_level(logging.INFO, logger=build_mod.log.name):
            forced = build_snapshot(spec, progress=False, force=True)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert caplog.messages[-1] == forced.summary()
    created = datetime.datetime.strptime(forced.index["created"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    assert abs(datetime.datetime.now(datetime.UTC) - created) < datetime.timedelta(hours=1)
    index_file = Path(forced.uri) / "index.json"
    assert index_file.read_text() == json.dumps(forced.index, indent=1)  # the layout people read
    assert forced.index["settings"] == identify(spec, read_inputs(spec, progress=False),
                                                build_mod.backbone_folder(spec.model.backbone))[1]
    assert forced.id == built.id and not forced.reused and forced.index["build"] != built.index["build"]
    assert shard.read_bytes() != bytes(rotten) and snap.verify_snapshot(forced.uri) > 0
    monkeypatch.setattr(build_mod, "ingest", lambda *a, **k: pytest.fail("remembered by the forced build"))
    assert build_snapshot(spec, progress=False).reused
    assert (Path(spec.data.shards) / "LATEST").read_text().strip() == built.id


# --- the quick check of an unchanged source ----------------------------------------------------

def listing_by_hand(folder: Path) -> list:
    import os

    out = []
    for dirpath, _, names in os.walk(folder):
        for name in names:
            p = Path(dirpath, name)
            out.append([str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns])
    return sorted(out)


def test_the_listing_of_a_folder_is_every_file_with_its_size_and_mtime(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.mp4").write_bytes(b"123")
    (tmp_path / "m.csv").write_text("h\n")
    assert build_mod._listing(str(tmp_path)) == listing_by_hand(tmp_path)
    assert [row[0] for row in build_mod._listing(str(tmp_path))] == ["a/b/x.mp4", "m.csv"]  # files only


def test_the_quick_key_changes_with_any_file_under_the_root_and_any_setting(tiny_backbones, source, tmp_path):
    import os
    import shutil

    src = tmp_path / "src"
    shutil.copytree(source, src)
    backbone = build_mod.backbone_folder(str(tiny_backbones["cogvideox"]))

    def key(**data):
        return build_mod.unchanged_source_key(make_spec(tiny_backbones["cogvideox"], src, tmp_path / "shards", **data),
                                              backbone)

    first = key()
    assert len(first) == 32 and key() == first
    # its layout written out, keys in another order than the code's: remembered keys must stay valid
    spec = make_spec(tiny_backbones["cogvideox"], src, tmp_path / "shards")
    payload = {"settings": {"family": "cogvideox", "backbone": build_mod.backbone_identity(spec.model.backbone, backbone),
                            "data": build_mod._settings(spec, backbone, None)["data"]},
               "files": listing_by_hand(src), "root": str(src), "manifest": str(src / "metadata.csv"), "schema": snap.SCHEMA}
    assert first == hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]
    assert key(frames=9) != first and key(seed=3) != first
    clip_file = sorted((src / "videos").iterdir())[0]
    st = clip_file.stat()
    os.utime(clip_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # touched: same bytes, newer mtime
    touched = key()
    assert touched != first
    clip_file.write_bytes(clip_file.read_bytes() + b"\0")  # longer
    grown = key()
    assert grown not in (first, touched)
    (src / "videos" / "new.txt").write_text("any file under the root counts")
    assert key() != grown
    # the key names the manifest: the same files read through another manifest are another source
    shutil.copy(src / "metadata.csv", src / "other.csv")
    with_both = key()
    csv_spec = make_spec(tiny_backbones["cogvideox"], src / "other.csv", tmp_path / "shards")
    assert build_mod.unchanged_source_key(csv_spec, backbone) != with_both


def test_the_quick_key_covers_the_clip_root_not_only_the_manifests_folder(tiny_backbones, source, tmp_path):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(source, root / "data")
    backbone = build_mod.backbone_folder(str(tiny_backbones["cogvideox"]))
    spec = make_spec(tiny_backbones["cogvideox"], root / "data", tmp_path / "shards", clip_root=str(root))
    first = build_mod.unchanged_source_key(spec, backbone)
    (root / "beside.mp4").write_bytes(b"a clip beside the manifest's folder")
    assert build_mod.unchanged_source_key(spec, backbone) != first
    without = make_spec(tiny_backbones["cogvideox"], root / "data", tmp_path / "shards")
    key = build_mod.unchanged_source_key(without, backbone)
    (root / "beside.mp4").write_bytes(b"changed, but outside the manifest's folder")
    assert build_mod.unchanged_source_key(without, backbone) == key
    assert build_mod._data_root(spec, "/x/data/metadata.csv") == str(root)
    assert build_mod._data_root(without, "/x/data/metadata.csv") == "/x/data"


def test_a_source_that_cannot_be_listed_has_no_quick_key(tiny_backbones, tmp_path, caplog):
    spec = make_spec(tiny_backbones["cogvideox"], tmp_path / "missing", tmp_path / "shards")
    with caplog.at_level(logging.DEBUG, logger=build_mod.log.name):
        assert build_mod.unchanged_source_key(spec, Path(tiny_backbones["cogvideox"])) is None
    [message] = caplog.messages
    missing = tmp_path / "missing"
    assert message == (f"no quick check of {missing}: {missing}: no such folder, or it is empty; check the path "
                       "(and AWS_ENDPOINT_URL for s3://)")


def test_a_snapshot_is_remembered_only_when_every_clip_is_under_the_root(tiny_backbones, source, tmp_path):
    shards = tmp_path / "shards"
    spec = make_spec(tiny_backbones["cogvideox"], source, shards)
    inside = IngestResult([Clip("v1", str(source / "videos" / "a.mp4"), "c", "k", "motion")])
    outside = IngestResult(inside.clips + [Clip("v2", "/elsewhere/b.mp4", "c", "k", "motion")])
    build_mod._remember(spec, None, "sid0", inside)
    assert not (shards / "sources").exists()  # no key, nothing to remember
    build_mod._remember(spec, "k1", "sid1", outside)
    assert not (shards / "sources").exists()
    build_mod._remember(spec, "k2", "sid2", inside)
    assert json.loads((shards / "sources" / "k2.json").read_text()) == {"id": "sid2", "source": str(source)}
    assert build_mod._memo_snapshot(str(shards), "k2") is None  # the snapshot it names is not there
    assert build_mod._memo_snapshot(str(shards), "k3") is None  # nothing remembered under that key
    (shards / "sid2").mkdir()
    (shards / "sid2" / "index.json").write_text(json.dumps({"id": "sid2", "counts": {}}))
    found = build_mod._memo_snapshot(str(shards), "k2")
    assert (found.id, found.uri, found.reused, found.index) == ("sid2", str(shards / "sid2"), True,
                                                                 {"id": "sid2", "counts": {}})


def test_the_source_report_is_what_a_build_would_take_and_quarantine(tiny_backbones, source, tmp_path):
    spec = make_spec(tiny_backbones["cogvideox"], source, tmp_path / "shards", min_alignment=None)
    report = build_mod.source_report(spec, tmp_path / "report", progress=False)
    assert report["pairs"] == {"train": 9, "val": 0, "unseen": 3}
    assert json.loads((tmp_path / "report" / "report.json").read_text()) == report
    assert (tmp_path / "report" / "quarantine.csv").is_file() and not (tmp_path / "shards").exists()


def test_no_training_pairs_says_why_and_the_fix():
    assert build_mod.no_train_pairs("/d", 8, 1, 0.25) == (
        "/d: no training pairs from 8 usable clips (a pair needs two training clips of one condition; "
        "unseen_conditions=1, val_fraction=0.25 and rows whose split is val/test are held out); add clips, "
        "or lower data.unseen_conditions / data.val_fraction")


def test_the_listing_of_an_s3_prefix_is_every_object_with_its_size_and_etag(monkeypatch):
    import boto3
    from moto import mock_aws

    for var in ("AWS_ENDPOINT_URL", "S3_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="vap-b")
        for key, body in (("data/videos/x.mp4", b"123"), ("data/metadata.csv", b"h\n"), ("other/y.mp4", b"4")):
            s3.put_object(Bucket="vap-b", Key=key, Body=body)
        etag = {k: s3.head_object(Bucket="vap-b", Key=k)["ETag"] for k in ("data/videos/x.mp4", "data/metadata.csv")}
        assert build_mod._listing("s3://vap-b/data") == [["metadata.csv", 2, etag["data/metadata.csv"]],
                                                     ["videos/x.mp4", 3, etag["data/videos/x.mp4"]]]
        assert [row[0] for row in build_mod._listing("s3://vap-b")] == ["data/metadata.csv", "data/videos/x.mp4", "other/y.mp4"]
        assert build_mod._listing("s3://vap-b/nothing") == []  # a page without Contents


def test_no_training_pairs_with_rejected_rows_points_at_the_quarantine(tiny_backbones, tmp_path, caplog, monkeypatch):
    src = tmp_path / "src"
    synthesize(str(src), conditions_per_category=1, clips_per_condition=2, frames=9, fps=8.0, size=32, progress=False)
    csv = src / "metadata.csv"
    csv.write_text(csv.read_text().replace(",train,", ",test,"))  # every row held out
    sorted((src / "videos").iterdir())[0].write_bytes(encode_mp4(np.zeros((4, 32, 32, 3), np.uint8), 8.0))
    monkeypatch.setattr(ClipEncoder, "from_pretrained", lambda *a, **k: pytest.fail("must not encode"))
    shards = tmp_path / "shards"
    spec = make_spec(tiny_backbones["cogvideox"], src, shards, unseen_conditions=0)
    with caplog.at_level(logging.WARNING, logger=build_mod.log.name), pytest.raises(DataError) as err:
        build_snapshot(spec, progress=False)
    assert str(err.value) == build_mod.no_train_pairs(str(src), 7, 0, 0.0)
    assert caplog.messages == [f"quarantined rows: {shards}/quarantine/quarantine.csv"]
    assert (shards / "quarantine" / "quarantine.csv").read_text().count("too_short") == 1


def test_wan_with_one_reference_passes_the_limit_and_unwritable_shards_stop_the_build_first(tiny_backbones, tmp_path,
                                                                                         monkeypatch):
    from vap.errors import StorageError

    monkeypatch.setattr(build_mod, "ingest", lambda *a, **k: pytest.fail("must not validate clips"))
    (tmp_path / "file").write_text("a file where the shards folder should be")
    shards = tmp_path / "file" / "shards"
    for family in ("wan", "cogvideox"):  # wan takes 1 reference: the default passes its limit
        spec = make_spec(tiny_backbones[family], tmp_path, shards, family=family, references_per_pair=1)
        with pytest.raises(StorageError, match=rf"^{shards}/.vap-write-probe-\d+: cannot write"):
            build_snapshot(spec, progress=False)


def test_no_progress_draws_nothing_on_a_terminal(tiny_backbones, source, tmp_path, monkeypatch):
    import io

    import rich
    from rich.console import Console

    screen = io.StringIO()
    monkeypatch.setattr(rich, "_console", Console(file=screen, force_terminal=True, width=100))
    spec = make_spec(tiny_backbones["cogvideox"], source, tmp_path / "shards")
    read_inputs(spec, progress=False)
    build_mod.source_report(spec, tmp_path / "report", progress=False)
    assert screen.getvalue() == ""
    read_inputs(spec)  # the control: by default the bars are drawn, and this screen sees them
    assert "validating" in screen.getvalue() and "\x1b[2Khashing clips \x1b" in screen.getvalue()  # the bar's name
    assert screen.getvalue().endswith("\r\x1b[1A\x1b[2K")  # transient: the last bar is erased when done
    screen.truncate(0)
    build_mod.source_report(spec, tmp_path / "report")
    assert "validating" in screen.getvalue()
    too_long = make_spec(tiny_backbones["cogvideox"], source, tmp_path / "shards", frames=17)  # stops after ingest
    screen.truncate(0)
    with pytest.raises(DataError, match="no usable clips"):
        build_snapshot(too_long, progress=False)
    assert screen.getvalue() == ""
    with pytest.raises(DataError, match="no usable clips"):
        build_snapshot(too_long)
    assert "validating" in screen.getvalue()


def test_the_encoders_load_with_the_specs_family_backbone_and_text_length(tiny_backbones, source, tmp_path,
                                                                          monkeypatch):
    class Loaded(Exception):
        pass

    asked = []

    def loading(family, path, *, text_len=None, device=None):
        asked.append((family, Path(path), text_len))
        raise Loaded

    monkeypatch.setattr(ClipEncoder, "from_pretrained", loading)
    spec = make_spec(tiny_backbones["cogvideox"], source, tmp_path / "shards", text_len=8)
    with pytest.raises(Loaded):
        build_snapshot(spec, progress=False)
    assert asked == [("cogvideox", build_mod.backbone_folder(spec.model.backbone), 8)]


def test_a_wan_snapshot_holds_each_clips_clip_image_embedding(tiny_backbones, tmp_path):
    src = tmp_path / "src"
    synthesize(str(src), conditions_per_category=1, clips_per_condition=2, frames=9, fps=8.0, size=32, progress=False)
    spec = make_spec(tiny_backbones["wan"], src, tmp_path / "shards", family="wan", unseen_conditions=0,
                     reference_candidates=1, text_len=8)
    built = build_snapshot(spec, progress=False)
    encoder = ClipEncoder.from_pretrained("wan", tiny_backbones["wan"], text_len=8)
    captions = {c.id: c for c in read_inputs(spec, progress=False).result.clips}
    [s, *_] = read_split(Path(built.uri) / "train")
    assert "reference_candidates" not in s  # one candidate: the pair's reference alone, unstacked
    for role, clip_id in zip(("target", "reference"), s["pair_id"].split("<-"), strict=True):
        want = oracle_columns(encoder, spec, Path(captions[clip_id].uri), captions[clip_id].caption)
        assert set(want) == {"latent", "image_latent", "image_embed", "text"} and want["text"].shape[0] == 8
        for name, value in want.items():
            np.testing.assert_array_equal(s[f"{role}_{name}"], value, err_msg=f"{role}_{name}")


def test_the_cache_holds_the_last_128_clips_by_default(tmp_path, monkeypatch):
    from vap.datasets import encode

    monkeypatch.setattr(encode, "read_clip", lambda data, **kw: np.zeros((1, 2, 2, 3), np.uint8))
    (tmp_path / "x.mp4").write_bytes(b"not read")
    clips = [Clip(f"v{i}", str(tmp_path / "x.mp4"), "c", "k", "motion") for i in range(129)]
    cache = build_mod._ClipCache(CountingEncoder(), make_spec("/bb", None, tmp_path).data)
    for c in clips[:128]:
        cache.get(c)
    cache.get(clips[0])
    assert cache.encoded == 128  # all 128 still held
    cache.get(clips[128])  # the 129th evicts the least recently used: v1
    assert list(cache.items)[0] == "v2" and len(cache.items) == 128 and "v0" in cache.items


def test_a_clip_that_cannot_be_read_is_named(tiny_backbones, tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"no video here")
    spec = make_spec(tiny_backbones["cogvideox"], None, tmp_path)
    cache = build_mod._ClipCache(CountingEncoder(), spec.data)
    with pytest.raises(DataError, match=rf"^{tmp_path}/broken.mp4: "):
        cache.get(Clip("b", str(tmp_path / "broken.mp4"), "c", "k", "motion"))


def test_read_inputs_pairs_as_make_pairs_does_with_the_specs_settings(tiny_backbones, source, tmp_path):
    from vap.datasets.pairs import make_pairs

    settings = {"seed": 3, "refs_per_target": 2, "unseen_conditions": 2, "val_fraction": 0.34, "reference_candidates": 3}
    inputs = read_inputs(make_spec(tiny_backbones["cogvideox"], source, tmp_path, **settings), progress=False)
    want = make_pairs(inputs.result.clips, seed=3, refs_per_target=2, val_fraction=0.34, unseen_conditions=2,
                      candidates=3)
    assert inputs.pairs == want
    assert inputs.pairs != make_pairs(inputs.result.clips, candidates=3)  # the defaults pair otherwise
    assert inputs.digests == {c.id: hashlib.sha256(Path(c.uri).read_bytes()).hexdigest() for c in inputs.result.clips}


def test_read_inputs_filters_by_alignment_and_clip_root_and_needs_frames_minus_one_over_fps(tiny_backbones, source,
                                                                                            tmp_path):
    import csv
    import shutil

    rows = list(csv.DictReader((source / "metadata.csv").open()))
    low = sum(float(r["reference_alignment_score"]) <= 80 for r in rows)
    assert 0 < low < len(rows)
    kept = read_inputs(make_spec(tiny_backbones["cogvideox"], source, tmp_path, min_alignment=80), progress=False)
    assert len(kept.result.clips) == len(rows) - low and kept.result.reasons() == {"low_alignment": low}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(DataError, match="no usable clips"):  # every clip lies outside the clip root
        read_inputs(make_spec(tiny_backbones["cogvideox"], source, tmp_path / "s", clip_root=str(elsewhere)),
                    progress=False)
    # frames = 5 at 8 fps need more than (5 - 1) / 8 = 0.5 s: a clip of 5 frames (0.625 s) is kept
    src = tmp_path / "src"
    shutil.copytree(source, src)
    sorted((src / "videos").iterdir())[0].write_bytes(encode_mp4(np.zeros((5, 32, 32, 3), np.uint8), 8.0))
    assert read_inputs(make_spec(tiny_backbones["cogvideox"], src, tmp_path), progress=False).result.rejected == []


def test_two_references_leave_out_the_pairs_of_a_condition_of_two_clips(tiny_backbones, source, tmp_path, caplog):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(source, src)
    sorted((src / "videos").iterdir())[0].write_bytes(encode_mp4(np.zeros((4, 32, 32, 3), np.uint8), 8.0))
    spec = make_spec(tiny_backbones["cogvideox"], src, tmp_path, references_per_pair=2, reference_candidates=1)
    with caplog.at_level(logging.WARNING, logger=build_mod.log.name):
        inputs = read_inputs(spec, progress=False)
    # 11 clips: the condition that lost one has 2 clips, each with 1 other: its 2 pairs are left out
    assert sum(len(p) for p in inputs.pairs.values()) == 9
    assert all(len(p.references) == 2 for ps in inputs.pairs.values() for p in ps)
    assert len(caplog.messages) == 1 and caplog.messages[0].startswith("pairs left out, fewer than 2 references")


def test_a_split_of_candidates_or_of_several_references_is_written_so(tmp_path):
    pairs = [Pair(clip(1), clip(2), "train", candidates=(clip(2), clip(3))),
             Pair(clip(4), clip(5), "train", candidates=(clip(5), clip(6)))]
    build_mod._write_split(str(tmp_path / "c"), pairs, 2, snap.columns(False, candidates=True), TaggedCache(),
                           lambda n: None)
    stacked = read_split(tmp_path / "c")
    assert [s["reference_candidates"] for s in stacked] == [2, 2]
    assert [float(s["reference_latent"][1].max()) for s in stacked] == [3, 6]
    build_mod._write_split(str(tmp_path / "m"), pairs, 2, snap.columns(False), TaggedCache(), lambda n: None, 2)
    along_time = read_split(tmp_path / "m")
    assert [s["reference_latent"].shape for s in along_time] == [(2, 6, 2, 2)] * 2
    assert json.loads(along_time[1]["reference_caption"]) == ["caption 5", "caption 6"]


def test_a_report_is_written_through_a_temporary_folder_that_says_it_is_ours(tmp_path, monkeypatch):
    from vap.datasets import report

    seen = []
    real = report.write_report
    monkeypatch.setattr(report, "write_report", lambda result, pairs, out: (seen.append(Path(out)), real(result, pairs, out))[1])
    build_mod._write_report(IngestResult(), {"train": [], "val": [], "unseen": []}, str(tmp_path / "report"))
    [folder] = seen
    assert folder.name.startswith("vap-report-") and not folder.exists()  # a crash leaves a folder named for us
    assert (tmp_path / "report" / "report.json").is_file()


def test_the_specs_references_per_pair_reaches_every_split_writer(tiny_backbones, source, tmp_path, monkeypatch):
    seen = []

    def writer(split_uri, pairs, per_part, cols, cache, advance, m=1):
        seen.append((Path(split_uri).name, m, "reference_candidates" in cols))
        return []

    monkeypatch.setattr(build_mod, "_write_split", writer)
    spec = make_spec(tiny_backbones["cogvideox"], source, tmp_path / "shards", references_per_pair=2,
                     reference_candidates=4)
    build_snapshot(spec, progress=False)
    assert seen == [("train", 2, False), ("val", 2, False), ("unseen", 2, False)]  # m > 1: laid along time
