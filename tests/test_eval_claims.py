"""`make claims`' data: with scene captions no training caption names its condition."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from vap.datasets.ingest import ingest
from vap.datasets.synth import CONDITIONS, synthesize

TOOLS = Path(__file__).resolve().parents[1] / "tools" / "claims.py"


@pytest.fixture(scope="module")
def claims():
    spec = importlib.util.spec_from_file_location("claims_tool", TOOLS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scene_captions_keep_the_clips_and_drop_the_condition_phrase(claims, tmp_path):
    raw = tmp_path / "raw"
    synthesize(str(raw), conditions_per_category=1, clips_per_condition=2, frames=5, size=16, progress=False)
    full = ingest(str(raw)).clips
    manifest = claims.scene_manifest(str(raw))
    scene = ingest(manifest).clips
    assert [(c.id, c.condition) for c in scene] == [(c.id, c.condition) for c in full]
    for before, after in zip(full, scene, strict=True):
        phrase = CONDITIONS[before.condition][1]
        assert phrase in before.caption and phrase not in after.caption
        assert before.caption.startswith(after.caption) and after.caption.endswith(" background")
    assert claims.scene_manifest(str(raw)) == manifest  # a rerun leaves the manifest (and the snapshot) as it is
