"""Snapshot building blocks: ids, columns, MDS parts (write, resume leftovers, merge), verification."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vap.datasets import snapshot as snap
from vap.errors import DataError

CLIPS = [{"id": "a", "sha256": "1" * 64, "caption": "x"}, {"id": "b", "sha256": "2" * 64, "caption": "y"}]


def test_snapshot_id_depends_on_content_not_order():
    base = snap.snapshot_id(CLIPS, {"frames": 9})
    assert base == snap.snapshot_id(list(reversed(CLIPS)), {"frames": 9})
    assert len(base) == 16 and all(c in "0123456789abcdef" for c in base)
    assert base != snap.snapshot_id(CLIPS, {"frames": 13})
    assert base != snap.snapshot_id([CLIPS[0], {**CLIPS[1], "sha256": "3" * 64}], {"frames": 9})


def test_columns_follow_the_contract():
    cog = snap.columns(with_image_embed=False)
    assert set(cog) == {"pair_id", "condition", "category", "target_caption", "reference_caption",
                        "target_latent", "reference_latent", "target_image_latent", "reference_image_latent",
                        "target_text", "reference_text"}
    assert set(snap.columns(with_image_embed=True)) - set(cog) == {"target_image_embed", "reference_image_embed"}


def samples(n: int, start: int = 0):
    for i in range(start, start + n):
        yield {"pair_id": f"p{i}", "condition": "c", "category": "style", "target_caption": "t", "reference_caption": "r",
               **{k: np.full((2, 3), i, np.float16) for k, v in snap.columns(False).items() if v.startswith("ndarray")}}


def write_snapshot(root: Path, parts: list[int]) -> None:
    split = str(root / "train")
    start = 0
    for i, n in enumerate(parts):
        snap.write_part(split, i, samples(n, start), snap.columns(False))
        start += n
    shards = snap.merge_parts(split, len(parts))
    index = {"id": root.name, "counts": {"train": {"pairs": sum(parts)}}, "shards": {"train": snap.shard_hashes(shards)}}
    (root / "index.json").write_text(json.dumps(index))


def test_parts_merge_into_one_readable_split(tmp_path):
    from streaming import StreamingDataset

    root = tmp_path / "abc"
    write_snapshot(root, [3, 2])
    index = json.loads((root / "train" / "index.json").read_text())
    assert [s["zip_data"]["basename"] for s in index["shards"]] == ["part-00000/shard.00000.mds.zstd",
                                                                   "part-00001/shard.00000.mds.zstd"]
    ds = StreamingDataset(local=str(root / "train"), remote=None, shuffle=False, batch_size=1)
    assert [ds[i]["pair_id"] for i in range(len(ds))] == ["p0", "p1", "p2", "p3", "p4"]
    assert float(ds[4]["target_latent"][0, 0]) == 4.0
    assert snap.verify_snapshot(str(root)) == 2


def test_a_part_is_done_only_with_its_index_and_leftovers_are_replaced(tmp_path):
    split = str(tmp_path / "train")
    leftover = tmp_path / "train" / "part-00000" / "shard.00000.mds.zstd"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a shard from a killed build")
    assert not snap.part_done(split, 0, 2)
    assert snap.write_part(split, 0, samples(2), snap.columns(False)) == 2
    assert snap.part_done(split, 0, 2) and not snap.part_done(split, 0, 3)
    assert leftover.read_bytes() != b"half a shard from a killed build"


def test_verify_names_a_corrupted_or_missing_shard(tmp_path):
    root = tmp_path / "abc"
    write_snapshot(root, [2, 2])
    shard = root / "train" / "part-00001" / "shard.00000.mds.zstd"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"shard train/part-00001/shard.00000.mds.zstd is corrupted"):
        snap.verify_snapshot(str(root))
    shard.unlink()
    with pytest.raises(DataError, match=r"shard train/part-00001/shard.00000.mds.zstd is missing"):
        snap.verify_snapshot(str(root))


def test_incomplete_snapshot_is_not_loaded_or_listed(tmp_path):
    (tmp_path / "abc" / "train").mkdir(parents=True)  # a build that never wrote index.json
    with pytest.raises(DataError, match="not a complete snapshot .*run `vap data build`"):
        snap.Snapshot.load(str(tmp_path / "abc"))
    assert snap.list_snapshots(str(tmp_path)) == []
