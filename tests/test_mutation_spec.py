"""The job spec's field and model checks (platform/spec.py's validators), each at its boundaries
and with its message written out: they are plain functions so that `make mutate` reaches them
(docs/TESTING.md), and each is also seen refusing through `parse_spec`, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from vap import spec as spec_mod
from vap.errors import SpecError
from vap.spec import MetricGate, PromotionSpec, parse_spec


def job(**edits) -> dict:
    data = {"name": "j", "model": {"family": "cogvideox", "backbone": "THUDM/CogVideoX-5b-I2V"},
            "data": {"shards": "/tmp/s"}, "trainer": {"steps": 10, "checkpoint_every": 5},
            "storage": {"uri": "/tmp/st"}, "registry": {"tracking_uri": "sqlite:////tmp/m.db"}}
    for key, value in edits.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    return data


def refused(data: dict) -> str:
    with pytest.raises(SpecError) as err:
        parse_spec(data, "job.yaml")
    return str(err.value)


def test_the_family_must_be_registered():
    assert spec_mod._registered_family("wan") == "wan" and spec_mod._registered_family("cogvideox") == "cogvideox"
    with pytest.raises(ValueError) as err:
        spec_mod._registered_family("sora")
    assert str(err.value) == "unknown backbone family; use one of ['cogvideox', 'wan']"
    assert "'model.family'" in refused(job(model__family="sora"))


def test_a_backbone_is_a_hub_id_kept_verbatim_or_a_location_normalised(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert spec_mod._backbone_uri("THUDM/CogVideoX-5b-I2V") == "THUDM/CogVideoX-5b-I2V"
    assert spec_mod._backbone_uri("file:///m/cog") == "/m/cog"
    assert spec_mod._backbone_uri("./cog") == str(tmp_path / "cog")
    assert spec_mod._backbone_uri("s3://b/cog") == "s3://b/cog"
    assert parse_spec(job(model__backbone="file:///m/cog")).model.backbone == "/m/cog"


def test_a_tracking_uri_refused_is_a_value_error_with_the_parsers_message():
    assert spec_mod._tracking_uri("sqlite:////x/m.db") == "sqlite:////x/m.db"
    with pytest.raises(ValueError) as err:
        spec_mod._tracking_uri("mlflow.local")
    assert type(err.value) is ValueError
    assert str(err.value) == "'mlflow.local' is not an MLflow URI; use http://host:port or sqlite:///path.db"
    assert parse_spec(job(registry={"tracking_uri": "sqlite:///rel.db"})).registry.tracking_uri == (
        f"sqlite:///{Path('rel.db').absolute()}")


@pytest.mark.parametrize("name", ["a", "a1", "a-b", "9" * 42, "x" + "-" * 40 + "y"])
def test_a_job_name_is_a_dns_label_of_at_most_42(name):
    assert spec_mod._dns_label(name) == name


@pytest.mark.parametrize("name", ["", "-a", "a-", "A", "a_b", "a" * 43, "a.b", " a"])
def test_other_job_names_are_refused_with_the_rule(name):
    with pytest.raises(ValueError) as err:
        spec_mod._dns_label(name)
    assert str(err.value) == ("use 1-42 lowercase letters, digits and '-', starting and ending alphanumeric "
                              "(e.g. vap-demo)")


def test_a_gate_needs_a_metric_or_a_required_one():
    with pytest.raises(ValueError) as err:
        PromotionSpec(metrics={})
    assert "a promotion gate needs at least one metric; list metrics or use `vap promote --force`" in str(err.value)
    assert PromotionSpec(metrics={}, required=["eval.val.loss"]).required == ["eval.val.loss"]
    gate = PromotionSpec(metrics={"m": MetricGate(greater_is_better=True)})
    assert spec_mod._gate_names_a_metric(gate) is gate
    with pytest.raises(ValueError) as err:
        spec_mod._gate_names_a_metric(PromotionSpec.model_construct(metrics={}, required=[]))
    assert str(err.value) == "a promotion gate needs at least one metric; list metrics or use `vap promote --force`"


def test_checkpoints_must_fall_within_the_steps():
    assert parse_spec(job(trainer={"steps": 10, "checkpoint_every": 10})).trainer.checkpoint_every == 10
    message = refused(job(trainer={"steps": 10, "checkpoint_every": 11}))
    assert ("trainer.checkpoint_every (11) exceeds trainer.steps (10): no checkpoint would be written; lower it"
            in message)
    spec = parse_spec(job())
    assert spec_mod._checkpoints_within_steps(spec) is spec
