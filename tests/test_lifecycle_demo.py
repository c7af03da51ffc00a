"""`make demo`'s library entry point, `vap.demo.run_demo`, at small size: examples/demo.yaml with
its data paths moved under a temporary folder, the shipped toy backbone, 12 synthetic clips, 2 steps on the session's Ray cluster, an eval of 2 val pairs. Oracle: what it
leaves behind, read with MLflow's own client and the storage layer — a snapshot, a committed
checkpoint, a registered version holding @champion, and a decodable sample video."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.yaml"


def test_run_demo_small(ray_cluster, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from vap.demo import run_demo

    spec = yaml.safe_load(DEMO.read_text())
    root = tmp_path / "demo"
    spec["model"]["backbone"] = str(Path(__file__).resolve().parents[1] / spec["model"]["backbone"])  # the shipped toy
    spec["data"].update(source=str(root / "raw"), shards=str(root / "store" / "vap-data"))
    spec["storage"]["uri"] = str(root / "store" / "runs")
    spec["registry"]["tracking_uri"] = f"sqlite:///{root / 'mlflow.db'}"
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(tmp_path)  # anything the demo writes relative to the working folder stays here
    # smaller than the demo's 64 clips (the encoding is most of its time): 4 conditions × 3 clips
    import vap.datasets.synth as synth

    full = synth.synthesize
    monkeypatch.setattr(synth, "synthesize", lambda out, **kw: full(out, **{**kw, "conditions_per_category": 1,
                                                                         "clips_per_condition": 3}))

    run_demo(config, steps=2, eval_pairs=2)

    assert (root / "store" / "vap-data" / "LATEST").is_file()
    runs = root / "store" / "runs" / spec["name"]
    assert any((d / "COMMITTED").is_file() for d in runs.glob("step-*")), sorted(runs.iterdir())
    client = MlflowClient(spec["registry"]["tracking_uri"], registry_uri=spec["registry"]["tracking_uri"])
    champion = client.get_model_version_by_alias(spec["registry"]["model_name"], "champion")
    assert champion.tags["expert_uri"].rstrip("/").endswith("/expert") and champion.source.startswith("models:/m-")
    assert list(tmp_path.rglob("sample.mp4")), "the demo wrote no sample video"
    report = json.loads((root / "store" / "eval" / "eval-val.json").read_text())
    assert report, "the demo's eval wrote an empty report"
