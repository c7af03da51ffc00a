"""Before training starts: a committed checkpoint from another backbone or expert layout, and
more workers than the Ray cluster can place, are one clear error; another world size is not."""

from __future__ import annotations

import json

import pytest
from test_faults_train import fake_snapshot
from test_train_preflight import _spec

from vap import storage
from vap.errors import ModelError, TrainingError
from vap.spec import load_spec
from vap.training import checkpoint as ckpt


def committed(spec, step: int, **model_changes) -> str:
    from vap.training.trainer import job_root

    model = spec.model.model_dump(mode="json")
    for key, value in model_changes.items():
        section, _, name = key.rpartition("__")
        (model[section] if section else model)[name] = value
    uri = storage.join(job_root(spec), ckpt.step_dir(step))
    storage.write_bytes(storage.join(uri, ckpt.META), json.dumps(
        {"step": step, "world_size": spec.trainer.workers, "model": model}).encode())
    storage.write_bytes(storage.join(uri, ckpt.COMMITTED), b"ok\n")
    return uri


@pytest.fixture()
def spec(tmp_path, monkeypatch):
    from vap.training import trainer

    monkeypatch.setattr(trainer, "_ensure_ray", lambda spec: pytest.fail("Ray must not start"))
    fake_snapshot(tmp_path / "shards", train_pairs=4)
    return load_spec(_spec(tmp_path))


def test_a_checkpoint_of_another_expert_layout_is_refused(spec, tmp_path):
    from vap.training.trainer import train

    uri = committed(spec, 10, expert__blocks=[0])
    with pytest.raises(ModelError, match=rf"{uri}: checkpoint of job vap-demo was trained with another model "
                                         r"\(model\.expert\.blocks=\[0\]\); .* or pass --no-resume"):
        train(spec, progress=False)
    assert not (tmp_path / "mlflow.db").exists()  # refused before any run opens


def test_a_checkpoint_of_another_backbone_is_refused(spec):
    from vap.training.trainer import train

    committed(spec, 10, backbone="THUDM/CogVideoX-5b-I2V")
    with pytest.raises(ModelError, match=r"model\.backbone='THUDM/CogVideoX-5b-I2V'"):
        train(spec, progress=False)


def test_a_checkpoint_of_another_world_size_is_resumable(spec, caplog):
    from vap.training import trainer

    uri = committed(spec, 10)
    one = spec.model_copy(update={"trainer": spec.trainer.model_copy(update={"workers": 1})})
    trainer._check_resumable(one)  # no error: restored through DeepSpeed's universal checkpoint
    assert f"checkpoint {uri} was written by 2 workers, resuming on 1" in caplog.text


def test_an_uncommitted_checkpoint_is_not_looked_at(spec, monkeypatch):
    from vap.training import trainer

    uri = committed(spec, 10, expert__blocks=[0])
    storage.remove(storage.join(uri, ckpt.COMMITTED))  # an interrupted upload
    trainer._check_resumable(spec)  # no error: it is not a candidate


@pytest.mark.slow
def test_more_workers_than_the_cluster_places_is_refused(ray_cluster, tmp_path):
    import ray

    from vap.training import trainer

    spec = load_spec(_spec(tmp_path, trainer={"workers": 64}))
    with pytest.raises(TrainingError, match=rf"trainer.workers=64 needs 64 CPUs but the Ray cluster has "
                                            rf"{ray.cluster_resources()['CPU']:g}; lower trainer.workers"):
        trainer._check_placeable(spec)
