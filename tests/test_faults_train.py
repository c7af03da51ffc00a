"""The driver's preflight of `vap train`, before Ray starts or an MLflow run opens: a snapshot
without training pairs, a second `vap train` of a running job, read-only storage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_train_preflight import _one_line_error, _spec, _train

from vap import lease
from vap.errors import DataError, LeaseError
from vap.spec import load_spec


def fake_snapshot(shards: Path, train_pairs: int) -> None:
    """What resolve_snapshot and the preflight read: LATEST and the snapshot's index.json."""
    (shards / "abc").mkdir(parents=True)
    (shards / "abc" / "index.json").write_text(json.dumps({"id": "abc", "counts": {
        "train": {"pairs": train_pairs}, "val": {"pairs": 0}, "unseen": {"pairs": 2}}}))
    (shards / "LATEST").write_text("abc\n")


def no_ray(monkeypatch):
    from vap.training import trainer

    monkeypatch.setattr(trainer, "_ensure_ray", lambda spec: pytest.fail("Ray must not start"))


def test_a_snapshot_without_training_pairs_is_refused_before_a_run_opens(tmp_path, monkeypatch):
    from vap.training.trainer import train

    no_ray(monkeypatch)
    spec = load_spec(_spec(tmp_path))
    fake_snapshot(tmp_path / "shards", train_pairs=0)
    with pytest.raises(DataError, match=r"snapshot abc has no training pairs; rebuild it"):
        train(spec, progress=False)
    assert not (tmp_path / "mlflow.db").exists()


def test_a_second_train_of_a_running_job_is_refused_naming_the_holder(tmp_path, monkeypatch):
    from vap.training.trainer import train

    no_ray(monkeypatch)
    spec = load_spec(_spec(tmp_path))
    fake_snapshot(tmp_path / "shards", train_pairs=4)
    with lease.hold(spec.storage.uri, spec.name):  # the first `vap train`, still running
        with pytest.raises(LeaseError, match=rf"job {spec.name} is already being trained by .* pid {os.getpid()}"):
            train(spec, progress=False)
    assert not (tmp_path / "mlflow.db").exists()  # no second MLflow run


def test_read_only_storage_is_one_line(tmp_path):
    fake_snapshot(tmp_path / "shards", train_pairs=4)
    if os.geteuid() == 0:  # root writes through permission bits; sysfs refuses new entries to anyone
        runs = "/sys/vap-test-runs"
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        runs = str(tmp_path / "ro" / "runs")
    line = _one_line_error(_train(_spec(tmp_path, storage={"uri": runs})))
    assert runs in line and "cannot" in line and "choose another location" in line
