"""Faults of `vap data build` and `vap data verify`: Ctrl-C mid-part then a re-run loses no pair,
verify counts pairs against the index, a source without training pairs is refused before work."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from test_build import make_spec

from vap.datasets import build as build_mod
from vap.datasets import snapshot as snap
from vap.datasets.build import build_snapshot
from vap.datasets.synth import synthesize
from vap.errors import DataError


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """4 conditions × 4 clips: 12 train pairs in 3 parts of 4, 4 unseen pairs."""
    out = tmp_path_factory.mktemp("src")
    synthesize(str(out), conditions_per_category=1, clips_per_condition=4, frames=9, fps=8.0, size=32, progress=False)
    return out


def stored_pairs(snapshot_uri: str, split: str) -> list[str]:
    """The pair ids a split's shards really hold, read with Streaming itself."""
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    ds = StreamingDataset(local=str(Path(snapshot_uri) / split), remote=None, shuffle=False, batch_size=1)
    return sorted(ds[i]["pair_id"] for i in range(len(ds)))


def test_ctrl_c_mid_part_then_rerun_loses_no_pair(tiny_backbones, source, tmp_path, monkeypatch):
    spec = make_spec(tiny_backbones["cogvideox"], str(source), str(tmp_path / "shards"), frames=5)
    clean = build_snapshot(make_spec(tiny_backbones["cogvideox"], str(source), str(tmp_path / "clean"), frames=5),
                           progress=False)
    real_sample, calls = build_mod._sample, []

    def ctrl_c_in_second_part(pair, *args):
        calls.append(pair.id)
        if len(calls) == 6:  # the 2nd of part-00001's 4 pairs: SIGINT, as a terminal's Ctrl-C sends
            os.kill(os.getpid(), signal.SIGINT)
        return real_sample(pair, *args)

    monkeypatch.setattr(build_mod, "_sample", ctrl_c_in_second_part)
    # Python's own Ctrl-C handler, as in a terminal: a library started by an earlier test in the
    # same session may have left its own installed (seen in the full suite)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            build_snapshot(spec, progress=False)
    finally:
        signal.signal(signal.SIGINT, before)
    monkeypatch.setattr(build_mod, "_sample", real_sample)

    again = build_snapshot(spec, progress=False)
    assert again.id == clean.id
    assert stored_pairs(again.uri, "train") == stored_pairs(clean.uri, "train")
    assert len(stored_pairs(again.uri, "train")) == again.counts["train"]["pairs"] == 12
    assert snap.verify_snapshot(again.uri) == snap.verify_snapshot(clean.uri)


def _short_snapshot(root: Path) -> None:
    """A snapshot as the interrupted build left it: a part of 1 pair where 2 were due, its
    index.json counting 4 pairs but recording the short part's shards (what merge gave it)."""
    from test_snapshot import samples

    split = str(root / "train")
    snap.write_part(split, 0, samples(2), snap.columns(False))
    snap.write_part(split, 1, samples(1, start=2), snap.columns(False))
    shards = snap.merge_parts(split, 2)
    (root / "index.json").write_text(json.dumps({"id": root.name, "counts": {"train": {"pairs": 4}},
                                                 "shards": {"train": snap.shard_hashes(shards)}}))


def test_verify_catches_a_short_part(tmp_path):
    _short_snapshot(tmp_path / "abc")
    with pytest.raises(DataError, match=r"train shards hold 3 pairs but index.json counts 4.*--force"):
        snap.verify_snapshot(str(tmp_path / "abc"))


def test_verify_catches_a_split_index_that_lists_other_shards(tmp_path):
    from test_snapshot import write_snapshot

    root = tmp_path / "abc"
    write_snapshot(root, [2, 2])
    split_index = json.loads((root / "train" / "index.json").read_text())
    split_index["shards"] = split_index["shards"][:1]  # Streaming would read half the split
    (root / "train" / "index.json").write_text(json.dumps(split_index))
    with pytest.raises(DataError, match=r"train/index.json does not list the shards"):
        snap.verify_snapshot(str(root))


def test_a_part_whose_marker_disagrees_with_its_shards_is_not_merged(tmp_path):
    from test_snapshot import samples

    split = str(tmp_path / "train")
    snap.write_part(split, 0, samples(2), snap.columns(False))
    (tmp_path / "train" / "part-00000" / snap.PART_DONE).write_text(json.dumps({"samples": 3}))
    assert not snap.part_done(split, 0, 2)
    with pytest.raises(DataError, match=r"part-00000: its shards hold 2 pairs, its vap-part.json 3"):
        snap.merge_parts(split, 1)


def test_no_training_pairs_is_refused_before_any_encoding(tiny_backbones, tmp_path, monkeypatch):
    src = tmp_path / "src"
    synthesize(str(src), conditions_per_category=1, clips_per_condition=2, frames=9, fps=8.0, size=32, progress=False)
    csv = src / "metadata.csv"
    csv.write_text(csv.read_text().replace(",train,", ",test,"))  # every row held out
    from vap.datasets.encode import ClipEncoder

    monkeypatch.setattr(ClipEncoder, "from_pretrained", lambda *a, **k: pytest.fail("must not encode"))
    spec = make_spec(tiny_backbones["cogvideox"], str(src), str(tmp_path / "shards"), frames=5, unseen_conditions=0)
    with pytest.raises(DataError, match=r"no training pairs from 8 usable clips .*data.val_fraction"):
        build_snapshot(spec, progress=False)
    assert not list((tmp_path / "shards").glob("*/index.json")) and not (tmp_path / "shards" / "LATEST").exists()


def test_rebuild_after_a_corrupt_shard_is_not_shadowed_by_the_cached_copy(tiny_backbones, source, tmp_path):
    from vap.datasets.loader import make_loader

    spec = make_spec(tiny_backbones["cogvideox"], str(source), str(tmp_path / "shards"), frames=5)
    built = build_snapshot(spec, progress=False)
    shard = Path(built.uri) / "train" / "part-00001" / "shard.00000.mds.zstd"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # bit rot in the object store
    shard.write_bytes(bytes(data))
    cache = tmp_path / "cache"

    def read_all() -> list[str]:
        loader = make_loader(built.uri, "train", batch_size=2, seed=0, local_cache=cache, shuffle=False)
        return sorted(pid for batch in loader for pid in batch["pair_id"])

    with pytest.raises(DataError, match=r"shard train/part-00001/shard\.00000\.mds\.zstd is corrupted.*--force"):
        read_all()
    rebuilt = build_snapshot(spec, progress=False, force=True)  # the fix the error recommends
    assert rebuilt.id == built.id
    assert read_all() == stored_pairs(rebuilt.uri, "train")  # same cache folder, the rebuilt shards


@pytest.mark.s3  # starts its own moto server (to stop it), not the session's s3_server fixture
def test_the_s3_endpoint_dying_mid_build_is_one_line(tiny_backbones, source, tmp_path, monkeypatch):
    import boto3
    from conftest import free_port
    from moto.server import ThreadedMotoServer

    from vap.errors import StorageError

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)  # our own: this test stops it
    server.start()
    url = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ENDPOINT_URL": url, "S3_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="dying")
    spec = make_spec(tiny_backbones["cogvideox"], str(source), "s3://dying/vap-data", frames=5)
    real_sample, calls = build_mod._sample, []

    def die_in_second_part(pair, *args):
        calls.append(1)
        if len(calls) == 6:
            server.stop()
        return real_sample(pair, *args)

    monkeypatch.setattr(build_mod, "_sample", die_in_second_part)
    try:
        with pytest.raises(StorageError, match=rf"cannot reach S3 endpoint {url}; start it or set AWS_ENDPOINT_URL"):
            build_snapshot(spec, progress=False)
    finally:
        server.stop()


def test_unwritable_shards_fail_before_any_clip_is_read(tiny_backbones, source, tmp_path, monkeypatch):
    from vap.errors import StorageError

    monkeypatch.setattr(build_mod, "ingest", lambda *a, **k: pytest.fail("must not validate clips"))
    (tmp_path / "file").write_text("a file where the shards folder should be")
    for shards in (str(tmp_path / "file" / "shards"), "/sys/vap-test-shards" if os.geteuid() == 0 else None):
        if shards is None:
            continue
        spec = make_spec(tiny_backbones["cogvideox"], str(source), shards, frames=5)
        with pytest.raises(StorageError, match=rf"{shards}/.vap-write-probe-\d+: cannot write"):
            build_snapshot(spec, progress=False)


def test_vap_data_verify_of_a_short_snapshot_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    import sys

    from vap.cli import main

    _short_snapshot(tmp_path / "abc")
    monkeypatch.setattr(sys, "argv", ["vap", "data", "verify", "abc", "--shards", str(tmp_path), "--no-progress"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "train shards hold 3 pairs but index.json counts 4" in err[0]
