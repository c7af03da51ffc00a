"""`vap train` checks every endpoint before any work starts: one line, the fix, exit code 2."""

import os
import subprocess

import yaml
from conftest import REPO, free_port


def _spec(tmp_path, **overrides) -> str:
    data = yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())
    data["data"]["shards"] = str(tmp_path / "shards")
    data["storage"]["uri"] = str(tmp_path / "runs")
    data["registry"]["tracking_uri"] = f"sqlite:///{tmp_path}/mlflow.db"
    for section, values in overrides.items():
        data[section].update(values)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _train(spec: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / ".venv/bin/vap"), "train", "--config", spec], capture_output=True, text=True,
                          timeout=180, env={**os.environ, **env})


def _one_line_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_unreachable_tracking_server(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    line = _one_line_error(_train(_spec(tmp_path, registry={"tracking_uri": url})))
    assert url in line and "registry.tracking_uri" in line
    assert not (tmp_path / "runs").exists()


def test_unreachable_storage_endpoint(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    spec = _spec(tmp_path, data={"shards": "s3://bucket/vap-data"}, storage={"uri": "s3://bucket/runs"})
    line = _one_line_error(_train(spec, AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x"))
    assert url in line and "AWS_ENDPOINT_URL" in line


def test_no_snapshot_yet(tmp_path):
    line = _one_line_error(_train(_spec(tmp_path)))
    assert "vap data build" in line
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run is opened before the checks pass
