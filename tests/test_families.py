"""The family registry: one folder per family, one bundle each, one rule for "hub id or storage"."""

from pathlib import Path

import pytest

from vap.errors import ModelError, SpecError
from vap.spec import parse_spec
from vap.storage import is_storage_location
from vap.training.families import family_names, family_of_transformer, get_family
from vap.training.families.base import Family


def test_every_folder_registers_a_complete_bundle():
    from vap.datasets.encode import ClipEncoder

    assert family_names() == ["cogvideox", "wan"]
    for name in family_names():
        fam = get_family(name)
        assert isinstance(fam, Family) and fam.name == name
        assert issubclass(fam.encoder, ClipEncoder) and fam.encoder.family == name
        assert family_of_transformer(fam.transformer_class) is fam
        # each piece is the family's own, not the base class's placeholder
        for method in ("build_tiny", "objective", "training_inputs", "decode", "embed", "head"):
            assert getattr(type(fam), method) is not getattr(Family, method), (name, method)


def test_unknown_family_is_one_line_naming_the_known_ones():
    with pytest.raises(ModelError, match=r"'sora'.*\['cogvideox', 'wan'\]"):
        get_family("sora")


def _spec(**model):
    return {"name": "j", "model": {"family": "wan", "backbone": "Wan-AI/x", **model},
            "data": {"shards": "/tmp/s"}, "storage": {"uri": "/tmp/o"}, "registry": {"tracking_uri": "sqlite:///x.db"}}


def test_spec_validates_family_against_the_registry():
    assert parse_spec(_spec(family="cogvideox")).model.family == "cogvideox"
    with pytest.raises(SpecError, match=r"model\.family.*cogvideox.*wan"):
        parse_spec(_spec(family="sora"))


@pytest.mark.parametrize("value, normalised", [
    ("THUDM/CogVideoX-5b-I2V", None), ("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", None),
    ("s3://bucket/models/cog", "s3://bucket/models/cog"), ("file:///m/cog", "/m/cog"), ("/m/cog", "/m/cog"),
    ("~/cog", str(Path("~/cog").expanduser())), ("./cog", str(Path("cog").absolute())),
])
def test_one_rule_decides_hub_id_or_storage(value, normalised):
    assert is_storage_location(value) is (normalised is not None)
    # the spec applies the same rule: storage locations are normalised, hub ids kept verbatim
    assert parse_spec(_spec(backbone=value)).model.backbone == (normalised or value)
    # and so does the cluster check: a storage backbone must be s3:// there, a hub id passes
    from vap.kube import cluster_problems

    flagged = any("model.backbone" in p for p in cluster_problems(parse_spec(_spec(backbone=value))))
    assert flagged is (normalised is not None and not value.startswith("s3://"))


def test_an_existing_relative_folder_is_storage(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert is_storage_location("org/name")
    assert parse_spec(_spec(backbone="org/name")).model.backbone == str(tmp_path / "org" / "name")
