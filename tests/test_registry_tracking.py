"""The tracking store's bootstrap: the platform chart's hook creates the bucket and the schema."""

import pytest

from vap import registry
from vap.errors import RegistryError


def test_prepare_tracking_creates_bucket_and_schema(s3_server, tmp_path):
    import boto3

    db = f"sqlite:///{tmp_path}/mlflow.db"
    assert registry.prepare_tracking_store(db, "s3://mlflow-boot/artifacts") == [
        "created bucket s3://mlflow-boot", "created the MLflow tables"]
    assert "mlflow-boot" in [b["Name"] for b in boto3.client("s3", endpoint_url=s3_server).list_buckets()["Buckets"]]
    # a rerun (every helm upgrade) is harmless: the bucket stays, the schema is brought up to date
    assert registry.prepare_tracking_store(db, "s3://mlflow-boot/artifacts") == ["upgraded the MLflow schema to the latest version"]
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    assert SqlAlchemyStore(db, "s3://mlflow-boot/artifacts").get_experiment("0").name == "Default"
    with pytest.raises(RegistryError, match="MLFLOW_BACKEND_STORE_URI is not a database URI"):
        registry.prepare_tracking_store("", "s3://mlflow-boot/artifacts")


def test_code_version_stamped_at_build_wins_over_git(monkeypatch):
    import subprocess

    from conftest import REPO

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    monkeypatch.delenv("VAP_CODE_VERSION", raising=False)
    assert registry.code_version() == head
    monkeypatch.setenv("VAP_CODE_VERSION", "abc1234")  # the image's ENV, from make image's build arg
    assert registry.code_version() == "abc1234"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "ARG VAP_CODE_VERSION" in dockerfile and "VAP_CODE_VERSION=$VAP_CODE_VERSION" in dockerfile
    assert "--build-arg VAP_CODE_VERSION=" in (REPO / "Makefile").read_text()
