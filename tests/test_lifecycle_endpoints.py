"""Only `AWS_ENDPOINT_URL` set (no `S3_ENDPOINT_URL`, no `MLFLOW_S3_ENDPOINT_URL`, as a user
who configured boto3 alone has it): Streaming's shard uploads and MLflow's artifact uploads still
reach that S3 server. Oracle: the objects, listed with boto3 at the server's own address.
(boto3 itself honours AWS_ENDPOINT_URL, so this holds even without `storage.sync_endpoint_env`,
which fills the other two for clients that read only those; a sync that sets them wrongly fails.)"""

from __future__ import annotations

import boto3
import pytest

from vap import storage
from vap.datasets.build import build_snapshot
from vap.datasets.synth import synthesize
from vap.spec import parse_spec


@pytest.fixture()
def only_aws_endpoint(s3_server, monkeypatch):
    monkeypatch.delenv("S3_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    return s3_server


def keys(server: str, bucket: str, prefix: str) -> set[str]:
    pages = boto3.client("s3", endpoint_url=server).get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                                             Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def test_streaming_and_mlflow_uploads_reach_the_aws_endpoint(only_aws_endpoint, s3_bucket, tiny_backbones,
                                                             tmp_path):
    import mlflow
    from mlflow import MlflowClient

    bucket = s3_bucket.removeprefix("s3://")
    synthesize(str(tmp_path / "src"), conditions_per_category=1, clips_per_condition=2, frames=9, fps=8.0, size=32,
               progress=False)
    spec = parse_spec({"name": "t", "model": {"family": "cogvideox", "backbone": str(tiny_backbones["cogvideox"])},
                       "data": {"source": str(tmp_path / "src"), "shards": f"{s3_bucket}/shards", "frames": 9,
                                "val_fraction": 0.0, "unseen_conditions": 0},
                       "storage": {"uri": f"{s3_bucket}/runs"},
                       "registry": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})
    snapshot = build_snapshot(spec, progress=False)  # MDSWriter uploads the shards as it writes them
    stored = keys(only_aws_endpoint, bucket, f"shards/{snapshot.id}/train/")
    assert "shards/" + snapshot.id + "/train/index.json" in stored
    assert any(k.endswith(".mds.zstd") for k in stored), sorted(stored)

    # MLflow's client-side artifact upload (an experiment whose artifacts live in the bucket)
    client = MlflowClient(spec.registry.tracking_uri)
    experiment = client.create_experiment("endpoints", artifact_location=f"{s3_bucket}/mlflow")
    run = client.create_run(experiment)
    (tmp_path / "report.json").write_text("{}")
    mlflow.set_tracking_uri(spec.registry.tracking_uri)
    client.log_artifact(run.info.run_id, str(tmp_path / "report.json"))
    assert f"mlflow/{run.info.run_id}/artifacts/report.json" in keys(only_aws_endpoint, bucket, "mlflow/")
    assert storage.exists(f"{s3_bucket}/mlflow/{run.info.run_id}/artifacts/report.json")
