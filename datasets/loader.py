"""Stream a snapshot's pairs to training: deterministic, resumable mid-epoch, each sample once.

`make_loader` wraps MosaicML Streaming: `StreamingDataset` partitions samples over the ranks of
the job (from `RANK` / `WORLD_SIZE` / `LOCAL_RANK` / `LOCAL_WORLD_SIZE`, which Ray Train 2.60
sets on each worker before it creates the process group; filled from torch.distributed when a
launcher did not), shuffles with a seed, and `StreamingDataLoader.state_dict()` records how far
the job got, so `load_state_dict` continues the same epoch without repeating a sample.

Every rank takes the same number of steps (collectives would hang otherwise): when a split's
size is not a multiple of world size × batch size, Streaming repeats a few samples to even the
ranks out, as torch's DistributedSampler does. Exactly once holds for the multiples.
"""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path

import numpy as np
from streaming import StreamingDataLoader, StreamingDataset

from vap import storage
from vap.datasets.snapshot import INDEX, LATEST, NULL_TEXT, SPLITS
from vap.errors import DataError, StorageError

log = logging.getLogger(__name__)

HASH = "xxh64"  # checked on every shard as it is fetched (sha1 is recorded too)


def resolve_snapshot(shards_uri: str, ref: str = "latest") -> str:
    """The URI of snapshot `ref` ("latest" or an id) under `shards_uri`; DataError if none."""
    if ref == "latest":
        try:
            ref = storage.read_bytes(storage.join(shards_uri, LATEST)).decode().strip()
        except StorageError as err:
            if "no such" not in str(err):
                raise
            raise DataError(f"{shards_uri}: no snapshot built yet (no {LATEST}); run `vap data build`") from None
    uri = storage.join(shards_uri, ref)
    if not storage.exists(storage.join(uri, INDEX)):
        raise DataError(f"{shards_uri}: snapshot {ref!r} does not exist or is incomplete; "
                        "run `vap data build` or pick one from `vap data list`")
    return uri


def load_null_text(snapshot_uri: str):
    """The empty caption's embedding [L, D] (float16 tensor), for caption dropout."""
    import torch

    return torch.from_numpy(np.load(io.BytesIO(storage.read_bytes(storage.join(snapshot_uri, NULL_TEXT)))))


def sync_world_env() -> None:
    """Give Streaming the rank layout: it reads env vars only, never torch.distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    rank, world = dist.get_rank(), dist.get_world_size()
    os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), str(world)  # the process group is the truth
    if "LOCAL_WORLD_SIZE" not in os.environ:
        # Ray Train and torchrun set the placement; a bare init_process_group (tests,
        # mp.spawn) is one node.
        log.warning("LOCAL_WORLD_SIZE is not set: assuming all %d ranks run on this node", world)
        os.environ["LOCAL_WORLD_SIZE"], os.environ["LOCAL_RANK"] = str(world), str(rank)


def _checksum_error(err: BaseException) -> DataError | None:
    """A DataError naming the shard if `err` (or what caused it) is Streaming's hash mismatch."""
    seen = err
    while seen is not None:
        m = re.search(r"Checksum failure: (\S+)", str(seen))
        if m:
            path = Path(m.group(1))
            # cache/<snapshot>/<split>/part-NNNNN/shard…: name it from the split on
            shard = "/".join(path.parts[-3:]) if path.parent.name.startswith("part-") else path.name
            return DataError(f"shard {shard} is corrupted (its {HASH} hash does not match index.json); "
                             "rebuild the snapshot with `vap data build --force`")
        seen = seen.__cause__ or seen.__context__
    return None


class _Dataset(StreamingDataset):
    """Raises the errors of Streaming's download threads: on its own, a failed download (a hash
    mismatch) only stops the epoch early, silently."""

    vap_failure: BaseException | None = None

    def on_exception(self, future) -> None:
        if future.exception() is not None and self.vap_failure is None:
            self.vap_failure = future.exception()
        super().on_exception(future)

    def __iter__(self):
        self.vap_failure = None
        yield from super().__iter__()
        if self.vap_failure is not None:
            raise _checksum_error(self.vap_failure) or self.vap_failure


class VapLoader(StreamingDataLoader):
    """StreamingDataLoader whose errors name the input: a corrupted shard becomes a DataError."""

    def __iter__(self):
        try:
            yield from super().__iter__()
        except Exception as err:
            named = _checksum_error(err)
            if named:
                raise named from None
            raise


def collate(samples: list[dict]) -> dict:
    """Arrays stacked into tensors [B, …] (a fresh, writable copy), everything else as lists."""
    import torch

    first = samples[0]
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) if isinstance(first[k], np.ndarray)
            else [s[k] for s in samples] for k in first}


def make_loader(snapshot_uri: str, split: str, *, batch_size: int, seed: int, local_cache: str | Path,
                shuffle: bool = True, num_workers: int = 0) -> VapLoader:
    """A resumable `StreamingDataLoader` over `split` of the snapshot at `snapshot_uri`.

    Yields dicts: arrays as batched torch tensors [B, …], strings as lists (docs/CONTRACTS.md).
    Shards are fetched into `local_cache` (one folder per snapshot and split, shared by the
    ranks of a node) and their hashes checked; a corrupted shard raises a DataError naming it.
    """
    if split not in SPLITS:
        raise DataError(f"split {split!r} does not exist; use one of {', '.join(SPLITS)}")
    storage.sync_endpoint_env()
    sync_world_env()
    remote = storage.join(snapshot_uri, split)
    if not storage.exists(storage.join(remote, INDEX)):
        raise DataError(f"{snapshot_uri}: split {split!r} has no pairs; build with more clips or pick another split")
    local = Path(local_cache) / storage.parse_uri(snapshot_uri).path.rstrip("/").rsplit("/", 1)[-1] / split
    dataset = _Dataset(remote=remote, local=str(local), split=None, shuffle=shuffle, shuffle_seed=seed,
                       batch_size=batch_size, validate_hash=HASH)
    return VapLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
