"""Checkpoints on local storage, pinned down by what the test computes itself: sha256 and sizes with
hashlib, the folders a listing must yield, the retry delays of the backoff, and what DeepSpeed is
asked to save and load (a recording engine: the arguments are DeepSpeed's API, not ours).
(tests/test_checkpoint_faults.py drives the same code through a faulty S3; this file is what
`make mutate` found missing, and runs in seconds.)"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from vap import storage
from vap.errors import StorageError, TrainingError
from vap.training import checkpoint as ckpt


def said(caplog) -> list[str]:
    """What the checkpoint module logged (vap.training.checkpoint, or training.checkpoint in mutmut's copy)."""
    return [r.getMessage() for r in caplog.records if r.name.endswith("training.checkpoint")]


@pytest.fixture()
def sleeps(monkeypatch) -> list[float]:
    """The backoff's delays, recorded instead of slept."""
    slept: list[float] = []

    class Clock:
        @staticmethod
        def sleep(seconds):
            slept.append(seconds)

    monkeypatch.setattr(ckpt, "time", Clock)
    return slept


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rank_files(folder: Path, rank: int, step: int) -> dict[str, bytes]:
    """One rank's files; rank 0's optimizer state spans two of `_sha256`'s 1 MiB blocks."""
    files = {f"vap/zero_pp_rank_{rank}_optim_states.pt": bytes([rank, step]) * ((3 << 19) if rank == 0 else 300),
             f"vap/rank{rank}/nested.bin": b"n" * (rank + 1)}
    if rank == 0:
        files[ckpt.META] = json.dumps({"step": step, "world_size": 2}).encode()
        files["expert/config.json"] = b"{}"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


def committed(tmp: Path, root: str, step: int, world: int = 2) -> str:
    uri = storage.join(root, ckpt.step_dir(step))
    for rank in range(world):
        folder = tmp / f"r{rank}-s{step}"
        rank_files(folder, rank, step)
        ckpt.write_manifest(folder, step=step, rank=rank, world=world)
        ckpt.upload(folder, uri)
    ckpt.commit(uri, world)
    return uri


def test_step_folders_are_eight_digits():
    assert ckpt.step_dir(7) == "step-00000007" and ckpt.step_dir(12345678) == "step-12345678"


def test_retrying_backs_off_exponentially_then_returns(sleeps, caplog):
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise StorageError(f"503 number {len(calls)}")
        return "done"

    with caplog.at_level(logging.WARNING):
        assert ckpt.retrying("upload of x", flaky) == "done"
    assert sleeps == [0.5, 1.0, 2.0] and len(calls) == 4
    assert said(caplog) == [f"upload of x failed (503 number {i}); retrying in {d}s ({i}/4)"
                            for i, d in ((1, "0.5"), (2, "1.0"), (3, "2.0"))]


def test_retrying_gives_up_after_its_attempts_with_the_last_error(sleeps):
    errors = [StorageError(f"down {i}") for i in range(3)]
    calls = iter(errors)

    def down():
        raise next(calls)

    with pytest.raises(StorageError) as err:
        ckpt.retrying("listing", down, attempts=3, base_delay=2.0)
    assert err.value is errors[-1] and sleeps == [2.0, 4.0]


def test_retrying_once_is_the_call_alone_and_fewer_is_refused(sleeps):
    calls = []

    def down():
        calls.append(1)
        raise StorageError("down")

    with pytest.raises(StorageError, match="^down$"):
        ckpt.retrying("listing", down, attempts=1)
    assert calls == [1] and sleeps == []
    with pytest.raises(ValueError, match=r"^retrying listing: attempts=0; give at least 1 \(the call itself\)$"):
        ckpt.retrying("listing", down, attempts=0)
    assert calls == [1]


def test_retrying_does_not_retry_other_errors(sleeps):
    calls = []

    def broken():
        calls.append(1)
        raise ValueError("a bug, not the network")

    with pytest.raises(ValueError):
        ckpt.retrying("x", broken)
    assert calls == [1] and sleeps == []


def test_the_manifest_lists_every_file_with_its_size_and_sha256(tmp_path):
    files = rank_files(tmp_path, 0, 3)
    (tmp_path / ckpt.MANIFEST_DIR).mkdir()
    (tmp_path / ckpt.MANIFEST_DIR / "rank-1.json").write_text("{}")  # another rank's: never listed
    path = ckpt.write_manifest(tmp_path, step=3, rank=0, world=2)
    assert path == tmp_path / "manifest" / "rank-0.json"
    text = path.read_text()
    manifest = json.loads(text)
    assert text == json.dumps(manifest, indent=2, sort_keys=True)  # canonical: stable bytes, diffable
    assert manifest == {"step": 3, "rank": 0, "world_size": 2, "files": {
        name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in files.items()}}


def test_upload_stores_every_file_and_the_manifest_last(tmp_path, monkeypatch, sleeps):
    folder = tmp_path / "local"
    files = rank_files(folder, 1, 5)
    ckpt.write_manifest(folder, step=5, rank=1, world=2)
    written, failed = [], set()
    real = storage.write_bytes

    def write(uri, data):
        if uri not in failed:  # every first attempt fails: each write is retried once
            failed.add(uri)
            raise StorageError("503")
        written.append(uri)
        real(uri, data)

    monkeypatch.setattr(storage, "write_bytes", write)
    uri = str(tmp_path / "store" / "step-00000005")
    ckpt.upload(folder, uri)
    names = [str(Path(w).relative_to(uri)) for w in written]
    assert sorted(names[:-1]) == sorted(files) and names[-1] == "manifest/rank-1.json"
    for name, data in files.items():
        assert (Path(uri) / name).read_bytes() == data
    assert sha(Path(uri) / "manifest/rank-1.json") == sha(folder / "manifest/rank-1.json")
    assert sleeps == [0.5] * len(written)


def test_commit_checks_every_rank_then_writes_the_marker(tmp_path):
    uri = committed(tmp_path, str(tmp_path / "job"), 4)
    assert (Path(uri) / "COMMITTED").read_bytes() == b"ok\n"


def test_commit_refuses_a_missing_manifest_of_any_rank(tmp_path):
    uri = str(tmp_path / "job" / "step-00000002")
    folder = tmp_path / "r0"
    rank_files(folder, 0, 2)
    ckpt.write_manifest(folder, step=2, rank=0, world=2)
    ckpt.upload(folder, uri)
    with pytest.raises(StorageError, match=rf"^{uri}: rank 1's manifest is missing; the checkpoint is not committed$"):
        ckpt.commit(uri, 2)
    assert not (Path(uri) / "COMMITTED").exists()
    ckpt.commit(uri, 1)  # rank 0's files are all there
    assert (Path(uri) / "COMMITTED").is_file()


def test_commit_refuses_a_listed_file_that_is_not_stored(tmp_path):
    uri = str(tmp_path / "job" / "step-00000002")
    folder = tmp_path / "r0"
    rank_files(folder, 0, 2)
    for late in ("vap/b_late.pt", "vap/a_late.pt"):
        (folder / late).write_bytes(b"x")
    ckpt.write_manifest(folder, step=2, rank=0, world=1)
    for late in ("vap/b_late.pt", "vap/a_late.pt"):
        (folder / late).unlink()  # listed, never uploaded
    ckpt.upload(folder, uri)
    with pytest.raises(StorageError, match=rf"^{uri}: 2 file\(s\) of rank 0 missing \(e\.g\. vap/a_late\.pt\); "
                                           "the checkpoint is not committed$"):
        ckpt.commit(uri, 1)


def test_listing_finds_step_folders_oldest_first_and_which_are_committed(tmp_path):
    root = str(tmp_path / "job")
    for step in (10, 2, 6):  # three: with two, the second and the last are the same one
        committed(tmp_path, root, step)
    for name in ("step-00000030/vap/x.pt", "step-00000020/vap/COMMITTED", "step-7/COMMITTED", "notes/COMMITTED",
                 "xstep-00000040/COMMITTED"):
        (Path(root) / name).parent.mkdir(parents=True, exist_ok=True)
        (Path(root) / name).write_bytes(b"ok\n")
    assert ckpt.checkpoints(root) == [(2, f"{root}/step-00000002", True), (6, f"{root}/step-00000006", True),
                                      (10, f"{root}/step-00000010", True), (20, f"{root}/step-00000020", False),
                                      (30, f"{root}/step-00000030", False)]
    assert ckpt.latest_committed(root) == (10, f"{root}/step-00000010")
    assert ckpt.latest_committed(str(tmp_path / "empty")) is None


def test_prune_removes_the_uncommitted_and_keeps_the_newest_committed(tmp_path, caplog):
    root = str(tmp_path / "job")
    for step in (2, 4, 6):
        committed(tmp_path, root, step)
    (Path(root) / "step-00000008" / "vap").mkdir(parents=True)
    (Path(root) / "step-00000008" / "vap" / "half.pt").write_bytes(b"x")
    with caplog.at_level(logging.INFO):
        ckpt.prune(root, keep=2)
    assert [(s, ok) for s, _, ok in ckpt.checkpoints(root)] == [(4, True), (6, True)]
    assert sorted(said(caplog)) == [f"removing old checkpoint {root}/step-00000002",
                                    f"removing uncommitted checkpoint {root}/step-00000008"]
    ckpt.prune(root, keep=1)
    assert [s for s, _, _ in ckpt.checkpoints(root)] == [6]


# Every storage call a checkpoint makes, failed once: the retry's warning names that operation (what
# an operator reads in the log when the store is flaky), and the operation still completes.
def _upload(tmp: Path, root: str, arm) -> None:
    folder = tmp / "r0"
    rank_files(folder, 0, 2)
    ckpt.write_manifest(folder, step=2, rank=0, world=1)
    arm()
    ckpt.upload(folder, storage.join(root, ckpt.step_dir(2)))


def _commit(tmp: Path, root: str, arm) -> None:
    uri = storage.join(root, ckpt.step_dir(2))
    folder = tmp / "r0"
    rank_files(folder, 0, 2)
    ckpt.write_manifest(folder, step=2, rank=0, world=1)
    ckpt.upload(folder, uri)
    arm()
    ckpt.commit(uri, 1)
    assert (Path(uri) / ckpt.COMMITTED).is_file()


def _prune(tmp: Path, root: str, arm) -> None:
    committed(tmp, root, 2)
    (Path(root) / "step-00000004").mkdir()
    (Path(root) / "step-00000004" / "half.pt").write_bytes(b"x")
    arm()
    ckpt.prune(root, keep=1)
    assert [s for s, _, _ in ckpt.checkpoints(root)] == [2]


def _listing(tmp: Path, root: str, arm) -> None:
    committed(tmp, root, 2)
    arm()
    assert [s for s, _, _ in ckpt.checkpoints(root)] == [2]


def _fetch(tmp: Path, root: str, arm) -> None:
    uri = committed(tmp, root, 2)
    arm()
    assert (ckpt.fetch(uri, tmp / "restored") / ckpt.META).is_file()


def _world_size(tmp: Path, root: str, arm) -> None:
    uri = committed(tmp, root, 2)
    arm()
    assert ckpt.world_size_of(uri) == 2


@pytest.mark.parametrize(("action", "call", "target", "operation"), [
    (_upload, "write_bytes", "vap/rank0/nested.bin", "upload of nested.bin"),
    (_upload, "write_bytes", "manifest/rank-0.json", "upload of the manifest"),
    (_commit, "list_files", "", "listing the checkpoint"),
    (_commit, "read_bytes", "manifest/rank-0.json", "reading a manifest"),
    (_commit, "write_bytes", "COMMITTED", "writing the commit marker"),
    (_listing, "list_files", "", "listing checkpoints"),
    (_prune, "remove", "step-00000004", "removing {root}/step-00000004"),
    (_fetch, "download_dir", "", "download of {root}/step-00000002"),
    (_world_size, "read_bytes", ckpt.META, "reading the checkpoint's metadata"),
], ids=lambda v: v if isinstance(v, str) and " " in v else None)
def test_a_failed_storage_call_is_retried_under_its_operation_name(tmp_path, monkeypatch, sleeps, caplog,
                                                                   action, call, target, operation):
    root = str(tmp_path / "job")
    real, failed = getattr(storage, call), []

    def once(uri, *args, **kwargs):  # the first call on `target` fails like a 503
        if not failed and uri.endswith(target):
            failed.append(uri)
            raise StorageError("503 Slow Down")
        return real(uri, *args, **kwargs)

    with caplog.at_level(logging.WARNING):
        action(tmp_path, root, lambda: monkeypatch.setattr(storage, call, once))
    assert len(failed) == 1
    assert said(caplog) == [f"{operation.format(root=root)} failed (503 Slow Down); retrying in 0.5s (1/4)"]


def test_fetch_checks_every_file_against_the_manifests(tmp_path):
    uri = committed(tmp_path, str(tmp_path / "job"), 2)
    local = ckpt.fetch(uri, tmp_path / "restored")
    assert local == tmp_path / "restored"
    for rank in range(2):
        for name, data in rank_files(tmp_path / f"again{rank}", rank, 2).items():
            assert (local / name).read_bytes() == data
    assert ckpt.world_size_of(uri) == 2


@pytest.mark.parametrize("damage", ["same size", "shorter", "gone"])
def test_fetch_refuses_a_damaged_file_naming_it(tmp_path, damage):
    uri = committed(tmp_path, str(tmp_path / "job"), 2)
    victim = Path(uri) / "vap" / "rank1" / "nested.bin"  # rank 1's: the second manifest is read too
    if damage == "gone":
        victim.unlink()
    else:
        original = victim.read_bytes()  # same size: only the checksum can tell (every byte flipped)
        victim.write_bytes(bytes(b ^ 0xFF for b in original) if damage == "same size" else original[:-1])
    with pytest.raises(StorageError, match=rf"^{uri}: vap/rank1/nested\.bin does not match the checkpoint's manifest; "
                                           "the checkpoint is damaged — remove it to resume from the one before$"):
        ckpt.fetch(uri, tmp_path / f"restored-{damage}")


def test_fetch_refuses_an_uncommitted_folder(tmp_path):
    uri = str(tmp_path / "job" / "step-00000002")
    Path(uri).mkdir(parents=True)
    with pytest.raises(StorageError, match=rf"^{uri}: not a committed checkpoint \(no COMMITTED marker\)$"):
        ckpt.fetch(uri, tmp_path / "restored")


# ---------------------------------------------------------------- save / restore with DeepSpeed's API

class Engine:
    """Records DeepSpeed engine calls; load_checkpoint hands back what save_checkpoint was given."""

    def __init__(self, universal: bool = False):
        self.saved, self.loaded, self.universal = [], [], universal

    def save_checkpoint(self, save_dir, tag=None, client_state=None, exclude_frozen_parameters=False):
        self.saved.append({"dir": save_dir, "tag": tag, "client": client_state,
                           "exclude_frozen": exclude_frozen_parameters})
        Path(save_dir, tag).mkdir(parents=True)
        Path(save_dir, tag, "mp_rank_00_model_states.pt").write_bytes(b"state")

    def load_checkpoint(self, load_dir, tag=None, load_module_strict=True):
        self.loaded.append({"dir": load_dir, "tag": tag, "strict": load_module_strict})
        return load_dir, (self.saved[-1]["client"] if self.saved else None)

    def load_universal_checkpoint(self):
        return self.universal


class Model:
    """The expert's parameters and its writer; the writer checks it runs with them gathered."""

    def __init__(self):
        self.weights = [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.zeros(3))]
        self.gathered = None

    def expert_parameters(self):
        return iter(self.weights)

    def save_expert(self, folder: Path):
        assert self.gathered is not None and self.gathered[0] == self.weights, "the expert is written gathered"
        folder.mkdir(parents=True)
        (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"expert")


@pytest.fixture()
def world(monkeypatch):
    """A rank and world size for torch.distributed, and deepspeed.zero.GatheredParameters recorded."""
    import deepspeed

    where = {"rank": 0, "world": 1, "model": None}
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: where["rank"])
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: where["world"])

    @contextmanager
    def gathered(params, modifier_rank="unset"):
        model = where["model"]
        model.gathered = (list(params), modifier_rank)
        try:
            yield
        finally:
            model.gathered = None

    monkeypatch.setattr(deepspeed.zero, "GatheredParameters", gathered)
    return where


def test_save_hands_deepspeed_the_resume_state_and_writes_the_expert_on_rank_0(tmp_path, world):
    engine, model = Engine(), Model()
    world.update(rank=0, world=2, model=model)
    rng = torch.get_rng_state()
    ckpt.save(engine, model, tmp_path, step=40, loader_state={"epoch": 1, "sample": 7}, meta={"loss": 0.25})
    (call,) = engine.saved
    assert call["dir"] == str(tmp_path) and call["tag"] == "vap" and call["exclude_frozen"] is True
    client = call["client"]
    assert set(client) == {"step", "loader", "world_size", "rng"}
    assert client["step"] == 40 and client["loader"] == {"epoch": 1, "sample": 7} and client["world_size"] == 2
    assert torch.equal(client["rng"], rng)
    assert (tmp_path / "expert" / "diffusion_pytorch_model.safetensors").read_bytes() == b"expert"
    text = (tmp_path / ckpt.META).read_text()
    assert json.loads(text) == {"step": 40, "world_size": 2, "loss": 0.25}
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True)
    manifest = json.loads((tmp_path / "manifest" / "rank-0.json").read_text())
    assert (manifest["step"], manifest["rank"], manifest["world_size"]) == (40, 0, 2)
    assert set(manifest["files"]) == {"vap/mp_rank_00_model_states.pt", "expert/diffusion_pytorch_model.safetensors",
                                      ckpt.META}
    assert model.gathered is None


def test_save_on_another_rank_gathers_but_writes_only_its_own_files(tmp_path, world):
    engine, model = Engine(), Model()
    world.update(rank=1, world=2, model=model)
    calls = []
    model.save_expert = lambda folder: calls.append(folder)
    ckpt.save(engine, model, tmp_path, step=40, loader_state={}, meta={})
    assert calls == [] and not (tmp_path / ckpt.META).exists()
    manifest = json.loads((tmp_path / "manifest" / "rank-1.json").read_text())
    assert manifest["rank"] == 1 and set(manifest["files"]) == {"vap/mp_rank_00_model_states.pt"}


def test_save_gathers_the_expert_read_only(tmp_path, world):
    engine, model = Engine(), Model()
    world.update(model=model)
    seen = []
    real = model.save_expert
    model.save_expert = lambda folder: (seen.append(model.gathered), real(folder))
    ckpt.save(engine, model, tmp_path, step=1, loader_state={}, meta={})
    (params, modifier_rank), = seen
    assert params == model.weights and modifier_rank is None  # None: no rank's edits are broadcast back


def test_restore_at_the_same_world_size_loads_the_tag_and_the_rng(tmp_path, world, caplog):
    engine, model = Engine(), Model()
    world.update(rank=0, world=2, model=model)
    ckpt.save(engine, model, tmp_path, step=40, loader_state={"sample": 7}, meta={})
    after_save = torch.rand(3)
    torch.rand(5)  # the generator moves on; restore must put it back
    with caplog.at_level(logging.INFO):
        assert ckpt.restore(engine, tmp_path) == (40, {"sample": 7})
    assert engine.loaded == [{"dir": str(tmp_path), "tag": "vap", "strict": False}]
    assert torch.equal(torch.rand(3), after_save)
    assert said(caplog) == [f"resumed from {tmp_path} at step 40"]


def test_restore_at_another_world_size_converts_to_a_universal_checkpoint(tmp_path, world, monkeypatch, caplog):
    from vap.training import zero

    engine, model = Engine(universal=True), Model()
    world.update(rank=0, world=2, model=model)
    ckpt.save(engine, model, tmp_path, step=40, loader_state=None, meta={})
    converted = []

    def to_universal(src, dst):
        converted.append((src, dst))
        assert Path(dst).parent.is_dir()  # the private folder exists while it is converted into

    monkeypatch.setattr(zero, "to_universal", to_universal)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    world.update(world=3)
    with caplog.at_level(logging.INFO):
        assert ckpt.restore(engine, tmp_path) == (40, None)
    ((src, dst),) = converted
    # converted from the checkpoint's tag into this rank's own folder, loaded from there, the checkpoint untouched
    assert src == str(tmp_path / "vap") and Path(dst).name == "vap-universal" and Path(dst).parent != tmp_path
    assert Path(dst).parent.name.startswith("vap-universal-")  # a copy left by a crash says whose it is
    assert engine.loaded == [{"dir": str(Path(dst).parent), "tag": "vap-universal", "strict": False}]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not Path(dst).parent.exists()  # the private copy is removed after the load
    assert said(caplog) == [f"converted {tmp_path} (world size 2) to a universal checkpoint for world size 3",
                            f"resumed from {tmp_path} at step 40"]


def test_restore_refuses_another_world_size_on_a_rigid_engine(tmp_path, world):
    engine, model = Engine(universal=False), Model()
    world.update(rank=0, world=2, model=model)
    ckpt.save(engine, model, tmp_path, step=40, loader_state={}, meta={})
    world.update(world=1)
    with pytest.raises(TrainingError, match=rf"^{tmp_path}: checkpoint of 2 ranks, engine of 1 built for a rigid load$"):
        ckpt.restore(engine, tmp_path)


def test_restore_without_a_deepspeed_state_says_so(tmp_path, world):
    (tmp_path / ckpt.META).write_text(json.dumps({"world_size": 1}))
    with pytest.raises(RuntimeError, match=rf"^{tmp_path}: no DeepSpeed checkpoint with tag 'vap'$"):
        ckpt.restore(Engine(), tmp_path)


def test_restore_of_a_state_without_rng_leaves_the_generator_alone(tmp_path, world):
    engine = Engine()
    engine.saved.append({"client": {"step": 3, "loader": {"s": 1}}})
    (tmp_path / ckpt.META).write_text(json.dumps({"world_size": 1}))
    state = torch.get_rng_state()
    assert ckpt.restore(engine, tmp_path) == (3, {"s": 1})
    assert torch.equal(torch.get_rng_state(), state)
