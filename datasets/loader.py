"""Stream a snapshot's pairs to training: deterministic, resumable mid-epoch, each sample once.

`make_loader` wraps MosaicML Streaming: `StreamingDataset` partitions samples over the ranks of
the job (from `RANK` / `WORLD_SIZE` / `LOCAL_RANK` / `LOCAL_WORLD_SIZE`, which Ray Train 2.60
sets on each worker before it creates the process group; filled from torch.distributed when a
launcher did not), shuffles with a seed, and `StreamingDataLoader.state_dict()` records how far
the job got, so `load_state_dict` continues the same epoch without repeating a sample.

Every rank takes the same number of steps (collectives would hang otherwise): when a split's
size is not a multiple of world size × batch size, Streaming repeats a few samples to even the
ranks out, as torch's DistributedSampler does. Exactly once holds for the multiples.

Reading copies each array once: cached shard files are memory-mapped, a sample's arrays are
views of them, and the batch is the one copy (benchmarks/bench_data.py, P1).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import mmap
import os
import re
import sys
from collections import OrderedDict
from pathlib import Path
from time import time_ns

import numpy as np
import streaming.base.dataset
from streaming import StreamingDataLoader, StreamingDataset
from streaming.base.constant import LOCALS, SHM_TO_CLEAN
from streaming.base.format.mds.encodings import mds_decode
from streaming.base.shared import SharedMemory
from streaming.base.shared import prefix as shm_prefix

from vap import storage
from vap.datasets.snapshot import INDEX, LATEST, NULL_TEXT, SPLITS, draw_reference
from vap.datasets.snapshot import local_cache as snapshot_cache
from vap.errors import DataError, StorageError

log = logging.getLogger(__name__)

HASH = "xxh64"  # checked on every shard as it is fetched (sha1 is recorded too)
# Samples Streaming's threads prepare ahead of the one being read. They poll every 7 ms and stop
# this far ahead; at its default (8 × batch size) the reader, at ~1 ms a paper-size sample, ran
# dry between polls and slept through a third of a cached epoch. Shards are never evicted (no
# cache limit), so reaching further ahead costs no disk, only fetching sooner.
PREDOWNLOAD = 1024
# Shard files a process keeps mapped (least recently read dropped first): at 64 MiB shards,
# 512 GiB of address space, well under Linux's default limit of 65530 mappings a process.
MAPPED_SHARDS = 8192


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


# Streaming names a dataset's shared memory by a prefix number that every rank finds on its own by
# scanning /dev/shm for the first free one, before its leader creates it (upstream issues
# mosaicml/streaming#689, #901). Two jobs on one node that scan at once pick the same number (one
# dies with FileExistsError('/000042_locals')), and a rank that scans after another job came or
# went finds another number than its leader ("shared memory registered does not match local
# leader"). Here only each node's leader scans, holding a node-wide lock until it has created the
# prefix, and its ranks take the number from it over torch.distributed.
PREFIX_LOCK = "/dev/shm/vap-streaming-prefix.lock"


@contextlib.contextmanager
def _node_lock():
    if not os.path.isdir(os.path.dirname(PREFIX_LOCK)):  # no /dev/shm (macOS): Streaming's own race
        yield
        return
    with open(PREFIX_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or by the kernel if we die
        yield


def _create_prefix(streams_local: list[str], streams_remote: list, retry: int):
    with _node_lock():
        prefix_int = max(shm_prefix._check_and_find_retrying(streams_local, streams_remote, name, retry)
                         for name in SHM_TO_CLEAN)
        data = shm_prefix._pack_locals(streams_local, prefix_int)
        shm = SharedMemory(shm_prefix._get_path(prefix_int, LOCALS), True, len(data))
        shm.buf[:len(data)] = data
    return prefix_int, shm


def register_shm_prefix(streams_local: list[str], streams_remote: list, world, retry: int = 100):
    """`streaming.base.shared.get_shm_prefix` with one scan per node: (prefix number, its locals)."""
    import torch.distributed as dist

    shm_prefix._check_self(streams_local)
    distributed = dist.is_available() and dist.is_initialized()
    if not distributed and not world.is_local_leader:  # nobody to ask: Streaming's own way
        return shm_prefix.get_shm_prefix(streams_local, streams_remote, world, retry)
    prefix_int, shm, failure = None, None, None
    if world.is_local_leader:
        try:
            prefix_int, shm = _create_prefix(streams_local, streams_remote, retry)
        except Exception as err:
            if not distributed:
                raise
            failure = err  # told to the node's ranks first, or they would wait for it forever
    if distributed:
        found = [None] * dist.get_world_size()
        dist.all_gather_object(found, (world.node, prefix_int, None if failure is None else str(failure)))
        _, prefix_int, error = next(f for f in found if f[0] == world.node and (f[1] is not None or f[2]))
        if failure is not None:
            raise failure
        if error is not None:
            raise DataError(f"rank {world.rank}: its node's leader could not register Streaming's shared memory: {error}")
    if not world.is_local_leader:
        shm = SharedMemory(shm_prefix._get_path(prefix_int, LOCALS), False)
        their_locals, _ = shm_prefix._unpack_locals(bytes(shm.buf))
        if their_locals != streams_local:
            raise DataError(f"rank {world.rank} reads {streams_local} but its node's leader {their_locals}: "
                            "give every rank of a node the same local_cache")
    return prefix_int, shm


streaming.base.dataset.get_shm_prefix = register_shm_prefix  # what StreamingDataset.__init__ calls


def _shard_name(path: str) -> str:
    """cache/<snapshot>/<split>/part-NNNNN/shard…: named from the split on, as in index.json."""
    p = Path(path)
    return "/".join(p.parts[-3:]) if p.parent.name.startswith("part-") else p.name


def _checksum_error(err: BaseException) -> DataError | None:
    """A DataError naming the shard if `err` (or what caused it) is Streaming's hash mismatch."""
    seen = err
    while seen is not None:
        m = re.search(r"Checksum failure: (\S+)", str(seen))
        if m:
            return DataError(f"shard {_shard_name(m.group(1))} is corrupted (its {HASH} hash does not match index.json); "
                             "rebuild the snapshot with `vap data build --force`")
        seen = seen.__cause__ or seen.__context__
    return None


class _Dataset(StreamingDataset):
    """Reads samples zero-copy and raises the errors of Streaming's download threads.

    Streaming's own read copies each sample three times (file → bytes → a bytes slice per
    column → array) before the batch copies it again. Here each cached (decompressed) shard
    file is mapped into memory once and a sample's arrays are read-only views of it:
    `BatchCollator` makes the one copy. Everything else is Streaming's: sample order,
    partitioning over ranks, `state_dict`, fetching and hash checks (`prepare_shard`, which runs
    before a shard is read).

    On its own, a failed download (a hash mismatch) only stops the epoch early, silently:
    `__iter__` raises it.
    """

    vap_failure: BaseException | None = None

    def on_exception(self, future) -> None:
        if future.exception() is not None and self.vap_failure is None:
            self.vap_failure = future.exception()
        super().on_exception(future)

    def _resume_incr_epoch(self) -> tuple[int, int]:
        # the epoch being read (also after load_state_dict): candidate references are drawn for it
        epoch, offset = super()._resume_incr_epoch()
        self.vap_epoch = epoch
        return epoch, offset

    def __iter__(self):
        self.vap_failure = None
        yield from super().__iter__()
        if self.vap_failure is not None:
            raise _checksum_error(self.vap_failure) or self.vap_failure

    def get_item(self, sample_id: int, retry: int = 7) -> dict:
        if getattr(self, "_event", None) is not None and self._event.is_set():
            raise RuntimeError("Background thread failed. Check other traceback.")  # as Streaming's
        shard_id, index = self.spanner[sample_id]
        for _ in range(1 + retry):
            try:
                mapped = self._mapped_shard(shard_id)
                break
            except FileNotFoundError:  # not fetched yet, or evicted (`cache_limit`): fetch, retry
                self.prepare_shard(shard_id)
        else:
            return super().get_item(sample_id, retry=0)  # Streaming's error naming the file
        self._shard_access_times[shard_id] = time_ns()  # what eviction orders shards by
        sample = _decode(self.shards[shard_id], mapped, index)
        if "reference_candidates" in sample:
            return draw_reference(sample, self.shuffle_seed, getattr(self, "vap_epoch", 0))
        return sample

    def prepare_shard(self, shard_id: int, blocking: bool = True) -> None:
        # Streaming's prepare thread calls this for every sample, and each call takes a file lock
        # (pure Python, holding the GIL the reader needs: without this, cached epochs of the P1
        # benchmark ran ~15 % slower). A shard this process has mapped was fetched and checked,
        # and stays readable while mapped: nothing to do.
        if shard_id in self.__dict__.get("_vap_maps", ()):
            self._shard_access_times[shard_id] = time_ns()
            return
        super().prepare_shard(shard_id, blocking)

    def _mapped_shard(self, shard_id: int) -> memoryview:
        """The shard's decompressed file in the local cache, mapped (pages shared with the page
        cache, so every rank of a node reads the same memory). A dropped mapping is unmapped
        once the last array viewing it is gone."""
        maps = self.__dict__.setdefault("_vap_maps", OrderedDict())
        if shard_id in maps:
            maps.move_to_end(shard_id)
        else:
            shard = self.shards[shard_id]
            with open(os.path.join(shard.dirname, shard.split, shard.raw_data.basename), "rb") as f:
                maps[shard_id] = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
            while len(maps) > MAPPED_SHARDS:
                maps.popitem(last=False)
        return maps[shard_id]

    def __getstate__(self) -> dict:
        # Memory maps do not pickle (DataLoader workers under spawn): each process maps its own.
        return {k: v for k, v in self.__dict__.items() if k != "_vap_maps"}


def _decode(shard, data: memoryview, index: int) -> dict:
    """Sample `index` of an MDS shard file (`MDSReader.get_sample_data` + `decode_sample`), its
    arrays views of `data` rather than copies; other columns decoded from bytes by Streaming."""
    begin = end = 0
    if 4 * (3 + index) <= len(data):  # [samples][offset × (samples + 1)][sample…]
        begin, end = (int(x) for x in np.frombuffer(data, np.uint32, count=2, offset=4 * (1 + index)))
    sample = data[begin:end]
    sizes, at = [], 0
    for size in shard.column_sizes:
        if not size:  # variable-size columns: their sizes lead the sample
            size = int(np.frombuffer(sample, np.uint32, count=1, offset=at)[0]) if at + 4 <= len(sample) else -1
            at += 4
        sizes.append(size)
    if not 0 < begin <= end <= len(data) or min(sizes) < 0 or at + sum(sizes) != len(sample):
        # Hashes are checked when a shard is fetched; this catches a cached file damaged since.
        path = os.path.join(shard.dirname, shard.split, shard.raw_data.basename)
        raise DataError(f"shard {_shard_name(path)} is damaged in the local cache {path} (sample {index} "
                        "does not fit the file); delete the file and run again: it will be fetched anew")
    out = {}
    for name, encoding, size in zip(shard.column_names, shard.column_encodings, sizes, strict=True):
        value = sample[at:at + size]
        out[name] = mds_decode(encoding, value if encoding.startswith("ndarray") else value.tobytes())
        at += size
    return out


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


class BatchCollator:
    """Stacks samples into a batch with one copy: arrays into tensors [B, …], everything else as
    lists.

    The tensors of a batch are carved from one buffer, reused once nothing holds that batch any
    more (every tensor and view of it gone): a fresh buffer would cost a page fault per 4 KiB on
    first touch, which made the copy 2× slower than the read itself. At most `keep` buffers are
    pooled; a batch still held is never written to.
    """

    ALIGN = 64  # bytes: each tensor starts on a cache line

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._buffers: list[np.ndarray] = []

    def __call__(self, samples: list[dict]) -> dict:
        import torch

        first = samples[0]
        arrays = [k for k, v in first.items() if isinstance(v, np.ndarray)]
        for k in arrays:
            if any(s[k].shape != first[k].shape or s[k].dtype != first[k].dtype for s in samples):
                raise ValueError(f"cannot batch {k!r}: samples differ in shape or dtype")
        spans = [-(-first[k].nbytes * len(samples) // self.ALIGN) * self.ALIGN for k in arrays]
        buffer, out, at = self._buffer(sum(spans)), {}, 0
        for k, span in zip(arrays, spans, strict=True):
            batch = buffer[at:at + first[k].nbytes * len(samples)].view(first[k].dtype)
            batch = batch.reshape((len(samples), *first[k].shape))
            for i, s in enumerate(samples):
                batch[i] = s[k]
            out[k] = torch.from_numpy(batch)
            at += span
        return {k: out[k] if k in out else [s[k] for s in samples] for k in first}

    def _buffer(self, nbytes: int) -> np.ndarray:
        free = [i for i in range(len(self._buffers)) if sys.getrefcount(self._buffers[i]) == 2]  # the pool's only
        for i in free:
            if self._buffers[i].nbytes == nbytes:
                return self._buffers[i]
        buffer = np.empty(nbytes, np.uint8)
        if free:  # a batch of another size (the last, shorter one): replace an idle buffer
            self._buffers[free[0]] = buffer
        elif len(self._buffers) < self.keep:
            self._buffers.append(buffer)
        return buffer


collate = BatchCollator()  # for callers batching samples of their own (one pool for the process)


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
    local = snapshot_cache(local_cache, snapshot_uri) / split  # keyed by the build: a rebuild is fetched anew
    dataset = _Dataset(remote=remote, local=str(local), split=None, shuffle=shuffle, shuffle_seed=seed,
                       batch_size=batch_size, validate_hash=HASH,
                       predownload=max(PREDOWNLOAD, 8 * batch_size))
    return VapLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=BatchCollator())
