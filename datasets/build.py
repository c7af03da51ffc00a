"""`vap data build`: raw clips → validated pairs → encoded MDS shards in a content-addressed snapshot.

validate (ingest) → hash clip bytes → snapshot id → [done already? stop] → pair → encode each
clip once (VAE latents, caption embeddings, Wan's CLIP embedding) → write each split in parts →
null_text.npy, report/, index.json → LATEST. A part is skipped when its marker says it holds all
its pairs, so an interrupted build resumes where it stopped and loses nothing. An unchanged source (same files, sizes and mtimes or
ETags, same settings) finds its snapshot from a listing alone, before any clip is read.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from vap import storage
from vap.datasets import snapshot as snap
from vap.datasets.ingest import ingest
from vap.datasets.pairs import make_pairs
from vap.datasets.records import Clip, IngestResult, Pair, Rejected
from vap.errors import DataError, StorageError
from vap.spec import JobSpec

log = logging.getLogger(__name__)


@dataclass
class Inputs:
    """What a snapshot is made of: the validated clips (with the rejected), their hashes, the pairs."""

    result: IngestResult
    digests: dict[str, str]  # clip id → sha256 of its bytes
    pairs: dict[str, list[Pair]]


def read_inputs(spec: JobSpec, progress: bool = True) -> Inputs:
    """Validate (ingest decodes every clip), hash and pair the clips of `spec.data.source`."""
    data = spec.data
    if not data.source:
        raise DataError("data.source is not set: point it at the raw clips (a folder or s3:// prefix "
                        "with metadata.csv), e.g. one written by `vap data synth`")
    storage.sync_endpoint_env()
    result = ingest(data.source, min_alignment=data.min_alignment, clip_root=data.clip_root, progress=progress)
    digests = _hash_clips(result, (data.frames - 1) / data.fps, progress)
    if not result.clips:
        where = quarantine_report(spec, result, {})
        raise DataError(f"{data.source}: no usable clips ({result.reasons()}); fix the input (every row and its "
                        f"reason: {where}/quarantine.csv)")
    m = data.references_per_pair
    pairs = make_pairs(result.clips, seed=data.seed, refs_per_target=data.refs_per_target,
                       val_fraction=data.val_fraction, unseen_conditions=data.unseen_conditions,
                       candidates=max(m, data.reference_candidates))
    if m > 1:  # m references per sample: a pair whose condition has fewer other clips cannot be one
        short = {s: sum(len(p.references) < m for p in ps) for s, ps in pairs.items()}
        if any(short.values()):
            log.warning("pairs left out, fewer than %d references in their condition: %s", m, short)
        pairs = {s: [p for p in ps if len(p.references) >= m] for s, ps in pairs.items()}
    return Inputs(result, digests, pairs)


QUARANTINE = "quarantine"  # <data.shards>/quarantine/: the report of the last build that made no snapshot


def quarantine_report(spec: JobSpec, result: IngestResult, pairs: dict) -> str:
    """Write the dataset report of a build that stops before its snapshot (rows rejected are never
    lost without a report); returns its URI."""
    uri = storage.join(spec.data.shards, QUARANTINE)
    _write_report(result, pairs, uri)
    return uri


def source_report(spec: JobSpec, out_dir: str | Path, progress: bool = True) -> dict:
    """The dataset report of `spec.data.source` (what a build would take and quarantine), to `out_dir`."""
    from vap.datasets.report import write_report

    inputs = read_inputs(spec, progress)
    return write_report(inputs.result, inputs.pairs, Path(out_dir))


def build_snapshot(spec: JobSpec, progress: bool = True, *, force: bool = False) -> snap.Snapshot:
    """Build (or find) the snapshot of `spec.data.source` for `spec.model`; return it.

    `force` rebuilds even when a complete snapshot with the same id exists.
    """
    data = spec.data
    from vap.training.families import get_family

    limit = get_family(spec.model.family).max_references
    if limit is not None and data.references_per_pair > limit:
        raise DataError(f"data.references_per_pair = {data.references_per_pair}, but a {spec.model.family} expert "
                        f"takes {limit} reference (the authors' model supports one); set it to {limit}")
    storage.probe_writable(data.shards)  # before minutes of validation and encoding, not after
    backbone = backbone_folder(spec.model.backbone)
    quick = None if force else unchanged_source_key(spec, backbone)
    if quick:
        found = _memo_snapshot(data.shards, quick)
        if found:
            log.info("%s is unchanged since snapshot %s was built: nothing to do", data.source, found.id)
            snap.write_latest(data.shards, found.id)
            return found

    inputs = read_inputs(spec, progress)
    result, pairs = inputs.result, inputs.pairs
    if not pairs["train"]:
        if result.rejected:
            log.warning("quarantined rows: %s/quarantine.csv", quarantine_report(spec, result, pairs))
        raise DataError(no_train_pairs(data.source, len(result.clips), data.unseen_conditions, data.val_fraction))
    sid, settings = identify(spec, inputs, backbone)
    root = storage.join(data.shards, sid)

    if storage.exists(storage.join(root, snap.INDEX)) and not force:
        log.info("snapshot %s already built from these inputs: nothing to do", sid)
        snap.write_latest(data.shards, sid)
        _remember(spec, quick, sid, result)
        return snap.Snapshot.load(root, reused=True)
    if force:
        storage.remove(root)

    from vap.datasets.encode import ClipEncoder

    encoder = ClipEncoder.from_pretrained(spec.model.family, backbone, text_len=data.text_len)
    encoder.check_frames(data.frames)
    cols = snap.columns(with_image_embed=encoder.image_encoder is not None,
                        candidates=data.reference_candidates > 1 and data.references_per_pair == 1)
    cache = _ClipCache(encoder, data)
    shards: dict[str, list[dict]] = {}
    total = sum(len(p) for p in pairs.values())
    with _progress(progress) as bar:
        task = bar.add_task(f"encoding pairs into {sid}", total=total)
        for split in snap.SPLITS:
            shards[split] = _write_split(storage.join(root, split), pairs[split], data.pairs_per_part, cols,
                                         cache, lambda n: bar.advance(task, n), data.references_per_pair)

    null_text = encoder.encode_text([""])[0]
    buf = io.BytesIO()
    np.save(buf, null_text)
    storage.write_bytes(storage.join(root, snap.NULL_TEXT), buf.getvalue())
    _write_report(result, pairs, storage.join(root, snap.REPORT))

    index = {
        "id": sid, "schema": snap.SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": data.source, "family": spec.model.family, "backbone": spec.model.backbone,
        "settings": settings, "text_len": encoder.text_len,
        "clips": len(result.clips), "rejected": result.reasons(),
        "counts": {s: snap.counts(pairs[s]) for s in snap.SPLITS},
        "shards": {s: snap.shard_hashes(shards[s]) for s in snap.SPLITS},
        "encoded_clips": cache.encoded,
        "build": uuid.uuid4().hex,  # tells this build from a rebuild of the same id (local caches are keyed by it)
    }
    storage.write_bytes(storage.join(root, snap.INDEX), json.dumps(index, indent=1).encode())
    snap.write_latest(data.shards, sid)
    _remember(spec, quick or unchanged_source_key(spec, backbone), sid, result)
    built = snap.Snapshot.load(root)
    log.info("%s", built.summary())
    return built


def no_train_pairs(source: str, clips: int, unseen: int, val_fraction: float) -> str:
    """Why a source gives no training pair, and the fix (also the trainer's preflight message)."""
    return (f"{source}: no training pairs from {clips} usable clips (a pair needs two training clips of one "
            f"condition; unseen_conditions={unseen}, val_fraction={val_fraction} and rows whose split is "
            "val/test are held out); add clips, or lower data.unseen_conditions / data.val_fraction")


def unchanged_source_key(spec: JobSpec, backbone: Path) -> str | None:
    """A key that changes whenever any file under the data root does (name, size and mtime, or
    S3 ETag — what make and rsync trust), or a setting: it finds the snapshot of an unchanged
    source without decoding or hashing a clip. Ingest reads nothing outside that root, so the key
    covers every clip a build reads. None when the source cannot be listed."""
    from vap.datasets.ingest import find_manifest

    try:
        manifest = find_manifest(spec.data.source)
        folder = _data_root(spec, manifest)
        listing = _listing(folder)
    except Exception as err:  # noqa: BLE001 - only a shortcut: the full path reports the problem
        log.debug("no quick check of %s: %s", spec.data.source, err)
        return None
    payload = {"schema": snap.SCHEMA, "manifest": manifest, "root": folder, "files": listing,
               "settings": _settings(spec, backbone, None)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def _listing(folder: str) -> list:
    loc = storage.parse_uri(folder)
    if loc.scheme == "file":
        base = Path(loc.path)
        return sorted([str(p.relative_to(base)), st.st_size, st.st_mtime_ns]
                      for p in base.rglob("*") if p.is_file() for st in [p.stat()])
    prefix = loc.path + "/" if loc.path else ""
    pages = storage.s3_client().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix)
    return sorted([o["Key"][len(prefix):], o["Size"], o["ETag"]] for page in pages for o in page.get("Contents", []))


def _memo_uri(shards: str, key: str) -> str:
    return storage.join(shards, "sources", f"{key}.json")


def _memo_snapshot(shards: str, key: str) -> snap.Snapshot | None:
    try:
        sid = json.loads(storage.read_bytes(_memo_uri(shards, key)))["id"]
        return snap.Snapshot.load(storage.join(shards, sid), reused=True)
    except (DataError, StorageError):
        return None


def _data_root(spec: JobSpec, manifest: str) -> str:
    """The folder every clip lies under (ingest refuses the others): data.clip_root, or the manifest's."""
    return storage.parse_uri(spec.data.clip_root).uri if spec.data.clip_root else manifest.rsplit("/", 1)[0]


def _remember(spec: JobSpec, key: str | None, sid: str, result: IngestResult) -> None:
    """Record which snapshot an unchanged source gives — only if every clip lives under the data
    root (the key does not see files elsewhere)."""
    from vap.datasets.ingest import find_manifest, inside

    if not key:
        return
    folder = _data_root(spec, find_manifest(spec.data.source))
    if all(inside(folder, c.uri) for c in result.clips):
        storage.write_bytes(_memo_uri(spec.data.shards, key), json.dumps({"id": sid, "source": spec.data.source}).encode())


def identify(spec: JobSpec, inputs: Inputs, backbone: Path) -> tuple[str, dict]:
    """(snapshot id, settings): the id hashes the clips' bytes and labels, the settings and the backbone."""
    settings = _settings(spec, backbone, inputs.result)
    clips = [_fingerprint(c, inputs.digests[c.id]) for c in inputs.result.clips]
    return snap.snapshot_id(clips, settings), settings


def _write_split(split_uri: str, pairs: list[Pair], per_part: int, cols, cache, advance, m: int = 1) -> list[dict]:
    if not pairs:
        return []
    n_parts = (len(pairs) + per_part - 1) // per_part
    for i in range(n_parts):
        chunk = pairs[i * per_part:(i + 1) * per_part]
        if snap.part_done(split_uri, i, len(chunk)):
            log.info("%s/%s already written: skipped", split_uri, snap.part_name(i))
        else:
            written = snap.write_part(split_uri, i, (_sample(p, cache, "reference_candidates" in cols, m)
                                                     for p in chunk), cols)
            if written != len(chunk):  # write_part marks what it wrote; the chunk is what it must hold
                raise DataError(f"{split_uri}/{snap.part_name(i)}: wrote {written} of {len(chunk)} pairs; "
                                "re-run the build to rewrite the part")
        advance(len(chunk))
    return snap.merge_parts(split_uri, n_parts)


def _sample(pair: Pair, cache: _ClipCache, candidates: bool = False, m: int = 1) -> dict:
    sample = {"pair_id": pair.id, "condition": pair.target.condition, "category": pair.target.category,
              "target_caption": pair.target.caption, "reference_caption": pair.reference.caption}
    for role, clip in (("target", pair.target), ("reference", pair.reference)):
        for name, value in cache.get(clip).items():
            sample[f"{role}_{name}"] = value
    if candidates:  # every candidate reference stacked: the loader draws one per epoch
        refs = pair.references
        for name in cache.get(refs[0]):
            sample[f"reference_{name}"] = np.stack([cache.get(c)[name] for c in refs])
        sample["reference_caption"] = json.dumps([c.caption for c in refs])
        sample["reference_candidates"] = len(refs)
    elif m > 1:  # m references along time, each with its own caption tokens and first frame
        refs = pair.references[:m]
        for name in cache.get(refs[0]):
            axis = 0 if name in ("text", "image_embed") else 1  # tokens, or frames of [C, F, h, w]
            sample[f"reference_{name}"] = np.concatenate([cache.get(c)[name] for c in refs], axis)
        sample["reference_caption"] = json.dumps([c.caption for c in refs])
    return sample


class _ClipCache:
    """Encodes each clip once: pairs of a condition reuse the same clips, and are written together."""

    def __init__(self, encoder, data, size: int = 128):
        self.encoder, self.data, self.size = encoder, data, size
        self.items: OrderedDict[str, dict] = OrderedDict()
        self.encoded = 0

    def get(self, clip: Clip) -> dict:
        from vap.datasets.encode import read_clip

        if clip.id in self.items:
            self.items.move_to_end(clip.id)
            return self.items[clip.id]
        d = self.data
        video = read_clip(storage.read_bytes(clip.uri), frames=d.frames, fps=d.fps, height=d.height,
                          width=d.width, window=d.time_window, name=clip.uri)
        cols = self.encoder.encode_clip(video)
        cols["text"] = self.encoder.encode_text([clip.caption])[0]
        self.encoded += 1
        self.items[clip.id] = cols
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return cols


def _hash_clips(result: IngestResult, seconds: float, progress: bool) -> dict[str, str]:
    """sha256 of each clip's bytes; clips too short for the spec move to `result.rejected`."""
    from rich.progress import track

    from vap.datasets.encode import clip_duration

    digests, keep = {}, []
    for clip in track(result.clips, "hashing clips", disable=not progress, transient=True):
        raw = storage.read_bytes(clip.uri)
        length = clip_duration(raw)
        if length <= seconds + 1e-6:  # read_clip needs the last sampled time to be on screen
            result.rejected.append(Rejected(clip.uri, "too_short", f"{clip.uri}: {length:.2f}s long, the spec's frames "
                                            f"and fps need more than {seconds:.2f}s; use longer clips or lower data.frames"))
            continue
        digests[clip.id] = hashlib.sha256(raw).hexdigest()
        keep.append(clip)
    result.clips = keep
    return digests


def _fingerprint(clip: Clip, digest: str) -> dict:
    return {"id": clip.id, "sha256": digest, "caption": clip.caption, "condition": clip.condition,
            "category": clip.category, "split": clip.split, "alignment": clip.alignment_score,
            "refs": list(clip.refs)}


def _settings(spec: JobSpec, backbone: Path, result: IngestResult | None) -> dict:
    d = spec.data
    keys = ("frames", "fps", "time_window", "height", "width", "text_len", "min_alignment", "seed", "refs_per_target",
            "reference_candidates", "references_per_pair",
            "val_fraction", "unseen_conditions", "pairs_per_part")
    settings = {"data": {k: getattr(d, k) for k in keys}, "family": spec.model.family,
                "backbone": backbone_identity(spec.model.backbone, backbone)}
    if result is not None:
        # the report lists the rejected clips: a changed rejection is a changed snapshot
        settings["rejected"] = sorted([r.source, r.reason] for r in result.rejected)
    return settings


def backbone_identity(name: str, folder: Path) -> dict:
    """What the encoders are: the name, every config's content, the weight files' names and sizes
    (hashing tens of GB of weights would cost more than it protects against)."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        rel = str(p.relative_to(folder))
        h.update(rel.encode())
        h.update(p.read_bytes() if p.suffix in (".json", ".txt", ".model") else str(p.stat().st_size).encode())
    return {"name": name, "files": h.hexdigest()[:16]}


def backbone_folder(backbone: str) -> Path:
    """A local folder of the backbone: a path, an s3:// / file:// URI (cached), or a hub id."""
    from vap.training.families.base import resolve_backbone

    # The encoders and the configs only: the transformer's weights are tens of GB the build never reads.
    wanted = ["transformer/config.json", "vae/*", "text_encoder/*", "tokenizer/*", "image_encoder/*",
              "image_processor/*"]
    return Path(resolve_backbone(backbone, wanted))


def _write_report(result: IngestResult, pairs: dict, uri: str) -> None:
    from vap.datasets.report import write_report

    with tempfile.TemporaryDirectory(prefix="vap-report-") as tmp:
        write_report(result, pairs, tmp)
        storage.upload_dir(tmp, uri)


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=not enabled, transient=True)
