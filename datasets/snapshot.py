"""Content-addressed snapshots of MDS shards.

Layout under the spec's `data.shards` URI (a path or s3:// prefix):

    <shards>/<snapshot_id>/
        train/ val/ unseen/      one MDS dataset per split (zstd, sha1 + xxh64 hashes)
            part-00000/ …        written by one MDSWriter each; done once its vap-part.json exists
            index.json           the split's merged index (what StreamingDataset reads)
        null_text.npy            embedding of the empty caption (caption dropout)
        report/                  the dataset report (report.json, quarantine.csv, distribution.png)
        index.json               counts, settings, shard hashes — written last: the snapshot exists
    <shards>/LATEST              the id of the last completed build

The id hashes everything the shards are made of (clip bytes, labels, settings, backbone), so the
same inputs give the same id and a rebuild finds its snapshot already there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vap import storage
from vap.errors import DataError, StorageError

log = logging.getLogger(__name__)

SCHEMA = 1  # bump when the shard columns or their meaning change: it changes every id
SPLITS = ("train", "val", "unseen")
INDEX = "index.json"
PART_DONE = "vap-part.json"  # a part's commit marker: written after its writer closed cleanly
LATEST = "LATEST"
NULL_TEXT = "null_text.npy"
REPORT = "report"
HASHES = ["sha1", "xxh64"]
SHARD_BYTES = 1 << 26  # 64 MiB (Streaming's default): later shards download while earlier ones are read


def snapshot_id(clips: list[dict], settings: dict) -> str:
    """A stable id: sha256 over the schema, each clip's content hash and labels, and settings."""
    payload = json.dumps({"schema": SCHEMA, "clips": sorted(clips, key=lambda c: c["id"]), "settings": settings},
                         sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def columns(with_image_embed: bool, candidates: bool = False) -> dict[str, str]:
    """The shard columns of docs/CONTRACTS.md ("Shard samples"). With `candidates`, the reference
    columns stack a pair's candidate references ([K, …], captions a JSON list) and
    `reference_candidates` holds K: the loader draws one per epoch (`draw_reference`)."""
    cols = {name: "str" for name in ("pair_id", "condition", "category", "target_caption", "reference_caption")}
    arrays = ["latent", "image_latent", "text"] + (["image_embed"] if with_image_embed else [])
    for role in ("target", "reference"):
        for a in arrays:
            cols[f"{role}_{a}"] = "ndarray:float16"
    if candidates:
        cols["reference_candidates"] = "int"
    return cols


def draw_reference(sample: dict, seed: int, epoch: int) -> dict:
    """The sample with one of its candidate references, drawn for (`seed`, `epoch`, pair): the
    same on every rank and on resume, another one (likely) next epoch."""
    k = int(sample.pop("reference_candidates"))
    key = f"{seed}/{epoch}/{sample['pair_id']}".encode()
    i = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % k
    for name, value in sample.items():
        if name.startswith("reference_") and name != "reference_caption":
            sample[name] = value[i]
    sample["reference_caption"] = json.loads(sample["reference_caption"])[i]
    return sample


def part_name(i: int) -> str:
    return f"part-{i:05d}"


def part_done(split_uri: str, i: int, expected: int) -> bool:
    """A part counts as done only when its marker says it holds all `expected` pairs.

    MDSWriter writes index.json on *any* exit, also when interrupted mid-part (Ctrl-C), so the
    index alone would pass off a short part as finished; the marker comes after a clean close.
    """
    try:
        marker = json.loads(storage.read_bytes(storage.join(split_uri, part_name(i), PART_DONE)))
    except (StorageError, ValueError):
        return False
    return marker.get("samples") == expected


def write_part(split_uri: str, i: int, samples: Iterable[dict], cols: dict[str, str],
               compression: str | None = "zstd") -> int:
    """Write one part with MDSWriter (uploading as it writes for s3://), then its marker.

    Returns the number of samples written; an exception (or Ctrl-C) leaves no marker, and the
    next attempt replaces whatever the interrupted one left.
    """
    from streaming import MDSWriter

    uri = storage.join(split_uri, part_name(i))
    storage.remove(uri)  # leftovers of an interrupted attempt
    loc = storage.parse_uri(uri)
    n = 0
    with tempfile.TemporaryDirectory(prefix="vap-mds-") as tmp:
        out = loc.path if loc.scheme == "file" else (str(Path(tmp, "part")), uri)
        try:
            with MDSWriter(out=out, columns=cols, compression=compression, hashes=HASHES, size_limit=SHARD_BYTES,
                           exist_ok=True) as writer:
                for sample in samples:
                    writer.write(sample)
                    n += 1
        except Exception as err:  # Streaming's upload threads only say "one of the threads failed"
            if loc.scheme != "s3":
                raise
            storage.list_files(uri, limit=1)  # names an unreachable endpoint or a missing bucket
            raise StorageError(f"{uri}: uploading the part failed ({err}); check the S3 endpoint and "
                               "re-run the build: it resumes at this part") from err
    storage.write_bytes(storage.join(uri, PART_DONE), json.dumps({"samples": n}).encode())
    return n


def merge_parts(split_uri: str, parts: int) -> list[dict]:
    """Write the split's index.json from its parts' (shard paths made relative to the split)."""
    shards = []
    for i in range(parts):
        part = storage.join(split_uri, part_name(i))
        index = json.loads(storage.read_bytes(storage.join(part, INDEX)))
        marker = json.loads(storage.read_bytes(storage.join(part, PART_DONE)))
        if sum(s["samples"] for s in index["shards"]) != marker["samples"]:
            raise DataError(f"{part}: its shards hold {sum(s['samples'] for s in index['shards'])} pairs, its "
                            f"{PART_DONE} {marker['samples']}; rebuild with `vap data build --force`")
        for shard in index["shards"]:
            for key in ("raw_data", "zip_data"):
                if shard.get(key):
                    shard[key]["basename"] = f"{part_name(i)}/{shard[key]['basename']}"
            shards.append(shard)
    storage.write_bytes(storage.join(split_uri, INDEX), json.dumps({"version": 2, "shards": shards}).encode())
    return shards


def shard_hashes(shards: list[dict]) -> list[dict]:
    """What a registered model records as lineage: each stored shard file and its hashes."""
    out = []
    for shard in shards:
        stored = shard.get("zip_data") or shard["raw_data"]
        out.append({"file": stored["basename"], "bytes": stored["bytes"], "samples": shard["samples"], **stored["hashes"]})
    return out


def counts(pairs) -> dict:
    """Pairs per condition and per category of one split."""
    return {"pairs": len(pairs),
            "by_condition": dict(sorted(Counter(p.target.condition for p in pairs).items())),
            "by_category": dict(sorted(Counter(p.target.category for p in pairs).items()))}


@dataclass(frozen=True)
class Snapshot:
    """A completed snapshot: its id, URI and what index.json records."""

    id: str
    uri: str
    index: dict = field(repr=False)
    reused: bool = False  # True when the build found it complete and did nothing

    @property
    def counts(self) -> dict:
        return self.index["counts"]

    @classmethod
    def load(cls, uri: str, reused: bool = False) -> Snapshot:
        try:
            index = json.loads(storage.read_bytes(storage.join(uri, INDEX)))
        except StorageError:
            raise DataError(f"{uri}: not a complete snapshot (no {INDEX}); run `vap data build`") from None
        return cls(index["id"], uri, index, reused)

    def summary(self) -> str:
        splits = ", ".join(f"{s} {c['pairs']}" for s, c in self.counts.items())
        state = "up to date, nothing rebuilt" if self.reused else "built"
        conditions = len({c for s in self.counts.values() for c in s["by_condition"]})
        return f"snapshot {self.id} {state}: {self.uri} — pairs: {splits}; {conditions} conditions"


def require_train_pairs(uri: str) -> Snapshot:
    """The snapshot at `uri`, or a DataError if it has nothing to train on (a snapshot built
    before builds refused that): checked before a training run is opened."""
    found = Snapshot.load(uri)
    if not found.counts.get("train", {}).get("pairs"):
        raise DataError(f"{uri}: snapshot {found.id} has no training pairs; rebuild it from more clips "
                        "(its report/ says what was held out or rejected) or lower data.unseen_conditions / "
                        "data.val_fraction")
    return found


def local_cache(cache_root: str | Path, uri: str) -> Path:
    """The folder under `cache_root` that holds the snapshot's shards locally: keyed by its id
    *and* its build (index.json changes with every build), so a snapshot rebuilt under the same id
    (`vap data build --force` after a corrupt shard) never reads the copies cached before.
    Copies of earlier builds of that id are removed."""
    import shutil

    index = storage.read_bytes(storage.join(uri, INDEX))
    sid = json.loads(index)["id"]
    folder = Path(cache_root) / f"{sid}-{hashlib.sha256(index).hexdigest()[:12]}"
    for stale in Path(cache_root).glob(f"{sid}-*"):
        if stale != folder:
            shutil.rmtree(stale, ignore_errors=True)
    return folder


def write_latest(shards_uri: str, sid: str) -> None:
    storage.write_bytes(storage.join(shards_uri, LATEST), f"{sid}\n".encode())


def list_snapshots(shards_uri: str) -> list[Snapshot]:
    """Completed snapshots under `shards_uri` (those with an index.json), oldest first."""
    ids = sorted({name.split("/")[0] for name in storage.list_files(shards_uri) if name.endswith(f"/{INDEX}")
                  and name.count("/") == 1})
    snaps = [Snapshot.load(storage.join(shards_uri, i)) for i in ids]
    return sorted(snaps, key=lambda s: s.index.get("created", ""))


def verify_snapshot(uri: str, progress: bool = False) -> int:
    """Check a snapshot against its index.json: each split holds the pairs it counts, the split
    index Streaming reads lists the recorded shards, and every shard file re-hashes to its sha1
    and xxh64. DataError naming the first problem; returns the number of shard files checked."""
    from rich.progress import track
    from streaming.base.hashing import get_hash

    index = Snapshot.load(uri).index
    fix = "rebuild with `vap data build --force`"
    for split, shard_list in index["shards"].items():
        held, counted = sum(f["samples"] for f in shard_list), index["counts"][split]["pairs"]
        if held != counted:
            raise DataError(f"{uri}: {split} shards hold {held} pairs but index.json counts {counted}; {fix}")
        if not shard_list:
            continue
        try:
            listed = json.loads(storage.read_bytes(storage.join(uri, split, INDEX)))["shards"]
        except (StorageError, ValueError, KeyError):
            raise DataError(f"{uri}: {split}/{INDEX} is missing or unreadable; {fix}") from None
        if shard_hashes(listed) != shard_list:
            raise DataError(f"{uri}: {split}/{INDEX} does not list the shards index.json records; {fix}")
    files = [(split, f) for split, shard_list in index["shards"].items() for f in shard_list]
    for split, f in track(files, "verifying shards", disable=not progress, transient=True):
        name = f"{split}/{f['file']}"
        try:
            data = storage.read_bytes(storage.join(uri, name))
        except StorageError:
            raise DataError(f"{uri}: shard {name} is missing; {fix}") from None
        for algo in HASHES:
            if get_hash(algo, data) != f[algo]:
                raise DataError(f"{uri}: shard {name} is corrupted ({algo} does not match index.json); {fix}")
    return len(files)
