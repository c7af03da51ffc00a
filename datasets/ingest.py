"""Read a video collection — VAP-Data's CSV layout or a JSONL manifest — and validate every clip.

Problems of the whole input (no manifest, a missing column, an unreachable endpoint) raise a
`DataError` / `StorageError`. Problems of one row or clip never raise: the row goes to
`IngestResult.rejected` with a reason code and a message naming the input and the fix.

CSV (VAP-Data): `video_paths`, `ref_video_paths` (JSON list), `tar_video_caption`, `kind`
(the condition), `split`, `reference_alignment_score`; an optional `category` column.
JSONL: one object per line with `video`, `caption`, `condition` and optionally `category`,
`split`, `alignment_score`, `refs`. Relative clip paths are relative to the manifest's folder;
every clip must lie under the data root (that folder, or the spec's `data.clip_root`).
A condition's category comes from the row, else from `categories.json` ({condition: category})
beside the manifest, else from the synthetic generator's table, else from the condition's name
(`infer_category`: "zoom_in" is camera), else it is `uncategorized`: the rows are kept (VAP-Data's
CSV has no category column) and one warning says how many and how to map them.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import logging
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rich.progress import track

from vap import storage
from vap.datasets.records import CATEGORIES, UNCATEGORIZED, Clip, IngestResult, Rejected
from vap.datasets.synth import SYNTH_CATEGORIES
from vap.datasets.validate import check_clip
from vap.errors import DataError

log = logging.getLogger(__name__)

REQUIRED_CSV_COLUMNS = ("video_paths", "tar_video_caption", "kind")
CATEGORY_FILE = "categories.json"
# S3 reads wait on the network; decoding releases the GIL in FFmpeg.
WORKERS = 4


@dataclass(frozen=True)
class _Row:
    """One manifest entry before its clip is checked."""

    source: str  # "metadata.csv:row 3" — what the quarantine report names
    path: str  # as written in the manifest
    caption: str
    condition: str
    category: str
    split: str
    score: str
    refs: tuple[str, ...]


def ingest(source: str, *, min_frames: int = 1, min_fps: float = 1.0, min_size: int = 8,
           min_alignment: float | None = None, clip_root: str | None = None, progress: bool = True) -> IngestResult:
    """Validate every clip listed at `source` and return the usable ones and the rejected ones.

    `source` is a folder or s3:// prefix holding `metadata.csv` (or one other `*.csv`, or one
    `*.jsonl`), or the manifest file itself. Each clip is decoded completely with PyAV and must
    have at least `min_frames` frames, `min_fps` frames per second and `min_size` pixels a side;
    rows with a `reference_alignment_score` at or below `min_alignment` are rejected as well. Every clip
    must lie under `clip_root` (default: the manifest's folder), so `../` and absolute paths
    cannot reach other files; a clip listed twice under different spellings is a duplicate.
    """
    manifest = storage.parse_uri(find_manifest(source)).uri  # absolute: relative clip paths hang off it
    root, name = manifest.rsplit("/", 1)
    text = _read_text(manifest)
    result = IngestResult()
    raw = _parse_jsonl(text, name, result) if name.endswith(".jsonl") else _parse_csv(text, name)
    # a condition some rows label gives its category to the rows that do not
    labelled = {r.condition: r.category.lower() for r in raw if r.condition and r.category}
    table = {**SYNTH_CATEGORIES, **labelled, **_category_file(root)}
    table.update(_unmapped_categories(raw, table, name))
    rows = [r for r in (_check_labels(r, table, min_alignment, result) for r in raw) if r]
    allowed = storage.parse_uri(clip_root).uri if clip_root else root
    rows = _contain(rows, root, allowed, result)
    rows = _drop_duplicates(rows, root, result)

    uris = [_resolve(root, r.path) for r in rows]
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = [pool.submit(check_clip, uri, min_frames=min_frames, min_fps=min_fps, min_size=min_size) for uri in uris]
        # A StorageError (endpoint gone) propagates: then the whole input is unusable.
        checks = [f.result()[1] for f in track(futures, f"validating {name}", disable=not progress, transient=True)]

    ids = {_resolve(root, r.path): _clip_id(r.path) for r in rows}
    good: list[tuple[_Row, str]] = []
    for row, uri, problem in zip(rows, uris, checks, strict=True):
        if problem:
            result.rejected.append(Rejected(row.source, problem[0], f"{row.source}: {problem[1]}"))
        else:
            good.append((row, uri))
    valid_ids = {ids[uri] for _, uri in good}
    for row, uri in good:
        refs = []
        for ref in row.refs:
            ref_uri = _resolve(root, ref)
            if ref_uri in ids and ids[ref_uri] in valid_ids:
                refs.append(ids[ref_uri])
            elif ref_uri not in ids:
                # A reference without a row of its own has no caption, so it cannot be used.
                if not inside(allowed, ref_uri):
                    result.rejected.append(Rejected(row.source, "outside_root", _outside(row.source, ref, allowed)))
                elif not storage.exists(ref_uri):
                    result.rejected.append(Rejected(row.source, "missing_reference",
                                                    f"{row.source}: reference {ref} does not exist; fix ref_video_paths or add the clip"))
        result.clips.append(Clip(
            id=ids[uri], uri=uri, caption=row.caption, condition=row.condition, category=row.category,
            split=row.split, alignment_score=float(row.score) if row.score else None, refs=tuple(refs),
        ))
    log.info("%s: %d clips valid, %d rejected %s", manifest, len(result.clips), len(result.rejected), result.reasons())
    return result


def find_manifest(source: str) -> str:
    """The manifest's URI: `source` itself if it names a .csv / .jsonl, else the one inside it."""
    if source.endswith((".csv", ".jsonl")):
        if not storage.exists(source):
            raise DataError(f"{source}: manifest not found; check the path (and AWS_ENDPOINT_URL for s3://)")
        return source
    everything = storage.list_files(source)
    if not everything:
        raise DataError(f"{source}: no such folder, or it is empty; check the path (and AWS_ENDPOINT_URL for s3://)")
    names = [n for n in everything if "/" not in n]
    if "metadata.csv" in names:
        return storage.join(source, "metadata.csv")
    found = [n for n in names if n.endswith(".csv")] or [n for n in names if n.endswith(".jsonl")]
    if len(found) == 1:
        return storage.join(source, found[0])
    if not found:
        raise DataError(f"{source}: no metadata.csv, *.csv or *.jsonl manifest in this folder; "
                        "point at VAP-Data's folder, or write a JSONL manifest with one "
                        '{"video": …, "caption": …, "condition": …, "category": …} object per line')
    raise DataError(f"{source}: several manifests ({', '.join(found)}); name the one to use, e.g. {storage.join(source, found[0])}")


def _read_text(uri: str) -> str:
    data = storage.read_bytes(uri)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{uri}: not UTF-8 text; save the manifest as UTF-8") from None


def _parse_csv(text: str, name: str) -> list[_Row]:
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in REQUIRED_CSV_COLUMNS if c not in columns]
    if missing:
        raise DataError(f"{name}: missing column(s) {', '.join(missing)} (has: {', '.join(columns) or 'none'}); "
                        f"VAP-Data's layout needs {', '.join(REQUIRED_CSV_COLUMNS)}")
    rows = []
    for n, rec in enumerate(reader, start=2):  # row 1 is the header
        rec = {(k or "").strip(): (v or "").strip() for k, v in rec.items() if k is not None}
        rows.append(_Row(f"{name}:row {n}", rec["video_paths"], rec["tar_video_caption"], rec["kind"],
                         rec.get("category", ""), rec.get("split") or "train",
                         rec.get("reference_alignment_score", ""), _ref_list(rec.get("ref_video_paths", ""))))
    return rows


def _ref_list(value: str) -> tuple[str, ...]:
    """VAP-Data writes the references as a JSON list; accept a Python list literal as well."""
    if not value:
        return ()
    for parse in (json.loads, ast.literal_eval):
        try:
            refs = parse(value)
            break
        except (ValueError, SyntaxError):
            continue
    else:
        refs = [value]
    if isinstance(refs, str):
        refs = [refs]
    return tuple(str(r) for r in refs if str(r).strip())


def _parse_jsonl(text: str, name: str, result: IngestResult) -> list[_Row]:
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name}:line {n}"
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError as err:
            result.rejected.append(Rejected(where, "bad_manifest_line", f"{where}: not a JSON object ({err}); one object per line"))
            continue
        refs = rec.get("refs") or ()
        rows.append(_Row(where, str(rec.get("video") or ""), str(rec.get("caption") or "").strip(),
                         str(rec.get("condition") or "").strip(), str(rec.get("category") or "").strip(),
                         str(rec.get("split") or "train"), str(rec.get("alignment_score") or ""),
                         tuple(str(r) for r in ([refs] if isinstance(refs, str) else refs))))
    return rows


def _category_file(root: str) -> dict[str, str]:
    uri = storage.join(root, CATEGORY_FILE)
    if not storage.exists(uri):
        return {}
    try:
        table = json.loads(storage.read_bytes(uri))
        assert isinstance(table, dict)
    except (ValueError, AssertionError):
        raise DataError(f"{uri}: must be a JSON object {{condition: category}}") from None
    return {str(k): str(v) for k, v in table.items()}


# Words in a condition's name that say its category (VAP-Data's `kind` values are such names).
CATEGORY_WORDS = {
    "camera": {"camera", "zoom", "pan", "tilt", "dolly", "orbit", "crane", "truck", "pedestal", "tracking", "arc",
               "handheld", "rotate", "rotation", "push", "pull"},
    "style": {"style", "anime", "cartoon", "ghibli", "painting", "sketch", "watercolor", "pixel", "oil", "clay",
              "claymation", "ink", "comic", "cyberpunk", "lego", "origami", "vangogh", "impressionism"},
    "motion": {"dance", "dancing", "walk", "walking", "run", "running", "jump", "jumping", "motion", "spin",
               "spinning", "wave", "waving", "punch", "kick", "swing", "swim", "fly", "flying"},
    "concept": {"transform", "transformation", "turn", "turns", "into", "become", "becomes", "melt", "explode",
                "explosion", "inflate", "dissolve", "statue", "squish", "crush", "cake", "freeze", "burn"},
}


def infer_category(condition: str) -> str | None:
    """The category a condition's name says (exactly one category's words in it), else None."""
    words = set(condition.lower().replace("_", " ").replace("-", " ").split())
    hits = [cat for cat, vocab in CATEGORY_WORDS.items() if words & vocab]
    return hits[0] if len(hits) == 1 else None


def _unmapped_categories(rows: list[_Row], table: dict[str, str], manifest: str) -> dict[str, str]:
    """Categories for the conditions neither a row nor the table labels: inferred from the name,
    else `uncategorized` — with one warning naming the count and how to map them."""
    unlabelled: dict[str, int] = {}
    for r in rows:
        if r.condition and not r.category and r.condition not in table:
            unlabelled[r.condition] = unlabelled.get(r.condition, 0) + 1
    found = {c: infer_category(c) or UNCATEGORIZED for c in unlabelled}
    inferred = sorted(c for c, cat in found.items() if cat != UNCATEGORIZED)
    if inferred:
        log.info("%s: categories of %d conditions inferred from their names: %s", manifest, len(inferred),
                 ", ".join(f"{c}={found[c]}" for c in inferred[:10]) + (" …" if len(inferred) > 10 else ""))
    missing = sorted(c for c, cat in found.items() if cat == UNCATEGORIZED)
    if missing:
        example = json.dumps({missing[0]: CATEGORIES[0]})
        log.warning("%s: %d rows of %d conditions have no category (%s); kept as '%s'. To report them by category, "
                    "map each condition in %s beside the manifest, e.g. %s, or add a category column",
                    manifest, sum(unlabelled[c] for c in missing), len(missing),
                    ", ".join(missing[:10]) + (" …" if len(missing) > 10 else ""), UNCATEGORIZED, CATEGORY_FILE,
                    example)
    return found


def _check_labels(row: _Row, table: dict[str, str], min_alignment: float | None, result: IngestResult) -> _Row | None:
    """The row with its category filled in, or None after recording why it is unusable."""
    def reject(reason: str, fix: str) -> None:
        result.rejected.append(Rejected(row.source, reason, f"{row.source}: {fix}"))

    if not row.path:
        return reject("missing_file", "no clip path; fill in video_paths / video")
    if not row.caption:
        return reject("missing_caption", f"{row.path} has no caption; write one (tar_video_caption / caption)")
    if not row.condition:
        return reject("missing_condition", f"{row.path} has no condition label; fill in kind / condition")
    category = (row.category or table.get(row.condition, "")).lower() or UNCATEGORIZED
    if category not in CATEGORIES and category != UNCATEGORIZED:
        return reject("bad_category", f"category '{category}' is not one of {', '.join(CATEGORIES)}; fix the label")
    if row.score:
        try:
            score = float(row.score)
        except ValueError:
            return reject("bad_alignment_score", f"reference_alignment_score '{row.score}' is not a number; fix or clear it")
        if min_alignment is not None and score <= min_alignment:  # the authors keep rows scoring above it
            return reject("low_alignment", f"reference_alignment_score {score:g} ≤ {min_alignment:g}; lower "
                          "data.min_alignment to keep it")
    return _Row(row.source, row.path, row.caption, row.condition, category, row.split, row.score, row.refs)


def _drop_duplicates(rows: list[_Row], root: str, result: IngestResult) -> list[_Row]:
    seen: dict[str, str] = {}
    kept = []
    for row in rows:
        uri = _resolve(root, row.path)
        if uri in seen:
            result.rejected.append(Rejected(row.source, "duplicate", f"{row.source}: {row.path} is already listed at {seen[uri]}; remove one row"))
            continue
        seen[uri] = row.source
        kept.append(row)
    return kept


def _contain(rows: list[_Row], root: str, allowed: str, result: IngestResult) -> list[_Row]:
    """Rows whose clip lies under `allowed`; the others are rejected before anything opens them
    (FFmpeg reads whatever file a manifest names)."""
    kept = []
    for row in rows:
        if inside(allowed, _resolve(root, row.path)):
            kept.append(row)
        else:
            result.rejected.append(Rejected(row.source, "outside_root", _outside(row.source, row.path, allowed)))
    return kept


def _outside(where: str, path: str, allowed: str) -> str:
    return (f"{where}: {path} is outside the data root {allowed}; move the clip under it, or set "
            "data.clip_root to a folder that holds it")


def _normal(uri: str) -> tuple[str, str, str]:
    """(scheme, bucket, path) with `.` and `..` resolved (lexically: links are not followed)."""
    loc = storage.parse_uri(uri)
    return loc.scheme, loc.bucket, posixpath.normpath(loc.path if loc.scheme == "file" else "/" + loc.path)


def inside(root: str, uri: str) -> bool:
    """Whether `uri` lies under the folder or prefix `root`."""
    (scheme, bucket, base), (s, b, path) = _normal(root), _normal(uri)
    return (scheme, bucket) == (s, b) and (path == base or path.startswith(base.rstrip("/") + "/"))


def _resolve(root: str, path: str) -> str:
    """The clip's URI, normalised: `a/../a/x.mp4` and `./a/x.mp4` are `a/x.mp4` — one clip, one URI."""
    scheme, bucket, key = _normal(path if "://" in path or path.startswith("/") else storage.join(root, path))
    return key if scheme == "file" else f"s3://{bucket}{key}"


def _clip_id(path: str) -> str:
    """Stable id: the path as written in the manifest (`.` and `..` resolved), without its extension."""
    path = path if "://" in path else posixpath.normpath(path)
    return path.rsplit(".", 1)[0] if "." in path.rsplit("/", 1)[-1] else path

