import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from vap.errors import SpecError
from vap.spec import load_spec, parse_spec

EXAMPLE = REPO / "examples" / "demo.yaml"


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_example_spec_is_valid_and_paths_become_absolute():
    spec = load_spec(EXAMPLE)
    assert spec.trainer.workers == 2 and spec.trainer.zero_stage == 3
    assert Path(spec.storage.uri).is_absolute()
    assert spec.registry.tracking_uri.startswith("sqlite:////")


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda d: d["trainer"].update(wrokers=2), "unknown key 'trainer.wrokers'"),
        (lambda d: d["trainer"].update(workers=0), "'trainer.workers'"),
        (lambda d: d["trainer"].update(lr="fast"), "'trainer.lr'"),
        (lambda d: d.pop("storage"), "missing key 'storage'"),
        (lambda d: d["storage"].update(uri="gs://bucket/x"), "unsupported scheme 'gs://'"),
        (lambda d: d["storage"].update(uri="s3:///nobucket"), "names a bucket"),
        (lambda d: d["model"].update(family="sora"), "'model.family'"),
        (lambda d: d["registry"].update(tracking_uri="mlflow.local"), "not an MLflow URI"),
        (lambda d: d["trainer"].update(checkpoint_every=500), "exceeds trainer.steps"),
        (lambda d: d.update(name="My Job"), "'name'"),
    ],
)
def test_bad_spec_is_refused_naming_the_key(edit, named):
    data = example()
    edit(data)
    with pytest.raises(SpecError) as err:
        parse_spec(data, "job.yaml")
    assert named in str(err.value)
    assert str(err.value).startswith("job.yaml: invalid job spec")


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")
    bad.write_text("- a list")
    with pytest.raises(SpecError, match="YAML mapping"):
        load_spec(bad)


def test_cli_spec_check_exit_codes_and_no_traceback(tmp_path):
    vap = str(REPO / ".venv/bin/vap")
    ok = subprocess.run([vap, "spec", "check", str(EXAMPLE)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load(ok.stdout)["name"] == "vap-demo"
    data = example()
    data["trainer"]["workers"] = -1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    out = subprocess.run([vap, "spec", "check", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "trainer.workers" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
