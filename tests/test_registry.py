"""The registry against a real MLflow tracking server (sqlite store, S3 artifacts over HTTP)."""

import subprocess

import pytest
from conftest import REPO, free_port

from vap.errors import RegistryError
from vap.registry import Registry


@pytest.fixture()
def registry(mlflow_server, request):
    return Registry(mlflow_server, f"expert-{request.node.name[:30].replace('_', '-')}")


def test_register_sets_challenger_and_promote_moves_champion(registry, s3_bucket):
    run = registry.start_run("job-a", {"trainer.lr": 1e-3}, {"vap.snapshot": "snap"})
    v1 = registry.register(run, f"{s3_bucket}/runs/job-a/ckpt1/expert", {"data_snapshot": "snap", "metric.eval_loss": 0.5})
    assert registry.version_of("challenger") == v1
    assert registry.version_of("champion") is None
    first = registry.promote()
    assert (first.version, first.previous) == (v1, None)
    v2 = registry.register(run, f"{s3_bucket}/runs/job-a/ckpt2/expert", {"metric.eval_loss": 0.4})
    assert registry.version_of("challenger") == v2 and registry.version_of("champion") == v1
    second = registry.promote()
    assert (second.version, second.previous) == (v2, v1)
    assert registry.resolve("@champion").source == f"{s3_bucket}/runs/job-a/ckpt2/expert"
    # rollback is one more promote, and the audit trail is on the version
    assert registry.promote(version=v1, force=True, reason="back to v1").previous == v2
    tags = registry.get_version(v1).tags
    assert tags["vap.promoted_to.champion"].startswith(f"previous={v2}")
    assert tags["data_snapshot"] == "snap"


def test_promote_without_challenger_and_unknown_version(registry):
    with pytest.raises(RegistryError, match="no @challenger"):
        registry.promote()
    with pytest.raises(RegistryError, match="has no version 99"):
        registry.get_version("99")


def test_unreachable_tracking_server_is_one_clear_line():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RegistryError, match=f"cannot reach the MLflow tracking server at {url}"):
        Registry(url, "m").check()
    out = subprocess.run([str(REPO / ".venv/bin/vap"), "promote", "--tracking-uri", url, "--model-name", "m"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert url in out.stderr and "registry.tracking_uri" in out.stderr


def test_cli_promote(registry, mlflow_server):
    run = registry.start_run("job-b", {}, {})
    version = registry.register(run, "s3://bucket/x/expert", {"metric.eval_loss": 0.5})
    out = subprocess.run([str(REPO / ".venv/bin/vap"), "promote", "--tracking-uri", mlflow_server,
                          "--model-name", registry.model_name], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"@champion -> version {version}" in out.stdout
    assert registry.version_of("champion") == version


def test_cli_gate_force_rollback_history_audit(registry, mlflow_server, tmp_path):
    def vap(*args):
        return subprocess.run([str(REPO / ".venv/bin/vap"), *args, "--tracking-uri", mlflow_server],
                              capture_output=True, text=True, timeout=120, env={**__import__("os").environ,
                                                                                 "VAP_REGISTRY_LOCK_URI": str(tmp_path)})

    name = ["--model-name", registry.model_name]
    run = registry.start_run("job-c", {}, {})
    v1 = registry.register(run, "s3://bucket/c1/expert", {"metric.eval_loss": 0.5})
    assert vap("promote", *name).returncode == 0
    v2 = registry.register(run, "s3://bucket/c2/expert", {"metric.eval_loss": 0.7})
    out = vap("promote", *name)
    assert out.returncode == 1 and registry.version_of("champion") == v1
    assert f"stays at version {v1}: version {v2} refused — eval_loss: challenger 0.7 vs champion 0.5" in out.stdout
    out = vap("promote", *name, "--force")
    assert out.returncode == 2 and "--force needs --reason" in out.stderr and "Traceback" not in out.stderr
    assert vap("promote", *name, "--force", "--reason", "known good").returncode == 0
    out = vap("rollback", *name)
    assert out.returncode == 0 and registry.version_of("champion") == v1
    lines = vap("registry", "history", registry.model_name).stdout.splitlines()
    assert [line.split()[3] for line in lines] == ["promoted", "refused", "forced", "rolled_back"]
    assert "known good" in lines[2]
    assert vap("registry", "audit", registry.model_name).returncode == 0
