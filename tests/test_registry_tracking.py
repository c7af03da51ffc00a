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
