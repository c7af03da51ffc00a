"""Checkpoints: DeepSpeed ZeRO state for exact resume + the expert alone for serving, committed
to object storage so that a crash mid-upload never leaves something that looks restorable.

Layout under `<storage.uri>/<job>/step-<NNNNNNNN>/` (every rank uploads its own files):
  vap/                        DeepSpeed ZeRO checkpoint, frozen backbone excluded; per rank r:
      zero_pp_rank_<r>_mp_rank_00_optim_states.pt   its partition: fp32 weights, Adam's m and v
      zero_pp_rank_<r>_mp_rank_00_model_states.pt   ≈33 KB whatever the model's size: ZeRO-3's
          empty parameter placeholders, parameter shapes, DeepSpeed's config and counters, and the
          client state (step, loader position, torch RNG state)
  latest                      DeepSpeed's tag pointer
  expert/                     the consolidated expert (safetensors, save_pretrained layout)
  vap-checkpoint.json         step, metrics, data snapshot — written by rank 0
  manifest/rank-<r>.json      files rank r wrote: size and sha256; step, world size
  COMMITTED                   written last by rank 0, once every rank's files are in storage

Only a folder with COMMITTED is ever restored; a folder without it is an interrupted upload and
is removed by the next commit. Loader position and RNG state travel in DeepSpeed's client state.
A checkpoint restores at any world size: at its own exactly (DeepSpeed's rigid load), at another
through DeepSpeed's universal checkpoint (`restore`).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from vap import storage
from vap.errors import StorageError, TrainingError
from vap.training import zero

log = logging.getLogger(__name__)

TAG = "vap"
EXPERT_DIR = "expert"
META = "vap-checkpoint.json"
MANIFEST_DIR = "manifest"
COMMITTED = "COMMITTED"
RECOVERY_SCRIPTS = ("zero_to_fp32.py", "zero_to_torch.py")
_STEP_DIR = re.compile(r"^step-(\d{8})$")

T = TypeVar("T")


def step_dir(step: int) -> str:
    return f"step-{step:08d}"


def retrying(what: str, fn: Callable[[], T], attempts: int = 5, base_delay: float = 0.5) -> T:
    """`fn()` retried with exponential backoff on StorageError (5xx, timeouts, resets that outlived
    botocore's own retries); the last error is raised as is."""
    if attempts < 1:
        raise ValueError(f"retrying {what}: attempts={attempts}; give at least 1 (the call itself)")
    for attempt in range(attempts - 1):
        try:
            return fn()
        except StorageError as err:
            delay = base_delay * 2**attempt
            log.warning("%s failed (%s); retrying in %.1fs (%d/%d)", what, err, delay, attempt + 1, attempts - 1)
            time.sleep(delay)
    return fn()  # the last attempt: its error reaches the caller


def save(engine, model, folder: Path, *, step: int, loader_state: dict, meta: dict) -> None:
    """Collective: every rank calls it with its own empty `folder`; each rank's manifest lists
    the files it wrote there."""
    import deepspeed

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    client = {"step": step, "loader": loader_state, "world_size": world, "rng": torch.get_rng_state()}
    engine.save_checkpoint(str(folder), tag=TAG, client_state=client, exclude_frozen_parameters=True)
    # DeepSpeed copies its consolidation scripts into every checkpoint (41 KB, 6 % of the tiny
    # demo expert's state): code the installed package runs as well (`python -m
    # deepspeed.utils.zero_to_fp32 <step-folder> <out>`), so they are not stored
    for script in RECOVERY_SCRIPTS:
        (folder / script).unlink(missing_ok=True)
    # ZeRO-3 shards every parameter; gather the expert's (collective) and let rank 0 write it.
    params = list(model.expert_parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        if rank == 0:
            model.save_expert(folder / EXPERT_DIR)
    if rank == 0:
        (folder / META).write_text(json.dumps({"step": step, "world_size": world, **meta}, indent=2, sort_keys=True))
    write_manifest(folder, step=step, rank=rank, world=world)


def write_manifest(folder: Path, *, step: int, rank: int, world: int) -> Path:
    """manifest/rank-<rank>.json: size and sha256 of every file this rank wrote into `folder`."""
    files = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": storage.sha256_file(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.parent.name != MANIFEST_DIR}
    path = folder / MANIFEST_DIR / f"rank-{rank}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"step": step, "rank": rank, "world_size": world, "files": files}, indent=2,
                               sort_keys=True))
    return path


def upload(folder: Path, uri: str) -> None:
    """This rank's files to `uri`, its manifest last (retried with backoff)."""
    manifest = next((folder / MANIFEST_DIR).glob("rank-*.json"))
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p != manifest:
            data = p.read_bytes()
            retrying(f"upload of {p.name}", lambda p=p, data=data: storage.write_bytes(
                storage.join(uri, str(p.relative_to(folder))), data))
    retrying("upload of the manifest", lambda: storage.write_bytes(
        storage.join(uri, MANIFEST_DIR, manifest.name), manifest.read_bytes()))


def commit(uri: str, world: int) -> None:
    """Rank 0, after every rank's upload returned: check that every manifest is there and every
    file it lists is stored, then write the commit marker. Raises StorageError otherwise."""
    stored = set(retrying("listing the checkpoint", lambda: storage.list_files(uri)))
    for rank in range(world):
        name = f"{MANIFEST_DIR}/rank-{rank}.json"
        if name not in stored:
            raise StorageError(f"{uri}: rank {rank}'s manifest is missing; the checkpoint is not committed")
        manifest = json.loads(retrying("reading a manifest", lambda name=name: storage.read_bytes(storage.join(uri, name))))
        missing = sorted(set(manifest["files"]) - stored)
        if missing:
            raise StorageError(f"{uri}: {len(missing)} file(s) of rank {rank} missing (e.g. {missing[0]}); "
                               "the checkpoint is not committed")
    retrying("writing the commit marker", lambda: storage.write_bytes(storage.join(uri, COMMITTED), b"ok\n"))


def checkpoints(root: str) -> list[tuple[int, str, bool]]:
    """(step, uri, committed) of every checkpoint folder under a job's root, oldest first."""
    found: dict[int, bool] = {}
    for name in retrying("listing checkpoints", lambda: storage.list_files(root)):
        top, _, rest = name.partition("/")
        m = _STEP_DIR.match(top)
        if m:
            found[int(m.group(1))] = found.get(int(m.group(1)), False) or rest == COMMITTED
    return [(step, storage.join(root, step_dir(step)), ok) for step, ok in sorted(found.items())]


def latest_committed(root: str) -> tuple[int, str] | None:
    committed = [(step, uri) for step, uri, ok in checkpoints(root) if ok]
    return committed[-1] if committed else None


def prune(root: str, keep: int) -> None:
    """Remove interrupted (uncommitted) folders and all but the newest `keep` committed ones.
    Rank 0 calls it right after a commit, when no other upload is in flight."""
    entries = checkpoints(root)
    kept = {step for step, _, ok in entries if ok}
    kept = set(sorted(kept)[-keep:])
    for step, uri, ok in entries:
        if step not in kept:
            log.info("removing %s checkpoint %s", "old" if ok else "uncommitted", uri)
            retrying(f"removing {uri}", lambda uri=uri: storage.remove(uri))


def fetch(uri: str, local: Path) -> Path:
    """Download a committed checkpoint and check every file against its manifest."""
    if not storage.exists(storage.join(uri, COMMITTED)):
        raise StorageError(f"{uri}: not a committed checkpoint (no {COMMITTED} marker)")
    retrying(f"download of {uri}", lambda: storage.download_dir(uri, local))
    for manifest in sorted((local / MANIFEST_DIR).glob("rank-*.json")):
        for name, want in json.loads(manifest.read_text())["files"].items():
            p = local / name
            if not p.is_file() or p.stat().st_size != want["size"] or storage.sha256_file(p) != want["sha256"]:
                raise StorageError(f"{uri}: {name} does not match the checkpoint's manifest; "
                                   "the checkpoint is damaged — remove it to resume from the one before")
    return local


def world_size_of(uri: str) -> int:
    """The world size a committed checkpoint was written at."""
    return json.loads(retrying("reading the checkpoint's metadata",
                               lambda: storage.read_bytes(storage.join(uri, META))))["world_size"]


def restore(engine, folder: Path) -> tuple[int, dict | None]:
    """Load the engine state saved by `save`; returns (step, loader state). `folder` is only read.

    A checkpoint of another world size is converted to DeepSpeed's universal checkpoint first
    (fp32 weights and Adam moments per parameter, re-partitioned over this world on load): the
    engine must have been built for it (`zero.build_engine(..., universal=True)`)."""
    saved, world = json.loads((folder / META).read_text())["world_size"], torch.distributed.get_world_size()
    if saved == world:
        client = _load(engine, folder, TAG)
    else:
        client = _load_universal(engine, folder, saved)
    if "rng" in client:
        torch.set_rng_state(client["rng"])
    log.info("resumed from %s at step %d", folder, client["step"])
    return client["step"], client.get("loader")


def _load_universal(engine, folder: Path, saved: int) -> dict:
    """Convert `folder`'s ZeRO state (written by `saved` ranks) and load it re-partitioned.
    Each rank converts into a folder of its own: ranks that share `folder` (one node, a shared
    file system) would otherwise race in ds_to_universal — one removes its temporary slices
    while another still merges them (an IndexError there) or loads a half-written file."""
    world = torch.distributed.get_world_size()
    if not engine.load_universal_checkpoint():
        raise TrainingError(f"{folder}: checkpoint of {saved} ranks, engine of {world} built for a rigid load")
    tag = f"{TAG}-universal"
    with tempfile.TemporaryDirectory(prefix="vap-universal-") as private:
        zero.to_universal(str(folder / TAG), str(Path(private) / tag))
        log.info("converted %s (world size %d) to a universal checkpoint for world size %d", folder, saved, world)
        return _load(engine, Path(private), tag)


def _load(engine, folder: Path, tag: str) -> dict:
    """DeepSpeed's load of `folder/tag`; the client state saved with it."""
    _, client = engine.load_checkpoint(str(folder), tag=tag, load_module_strict=False)
    if client is None:
        raise RuntimeError(f"{folder}: no DeepSpeed checkpoint with tag {tag!r}")
    return client
