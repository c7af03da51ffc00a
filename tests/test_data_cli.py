"""`vap data …`: synth → report → build → list → verify, and errors as one line with exit code 2."""

from __future__ import annotations

import json
import sys

import pytest
import yaml
from typer.testing import CliRunner

from vap.datasets.cli import app

runner = CliRunner()



def vap(*args: str):
    result = runner.invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def write_spec(path, backbone, **data):
    spec = {"name": "t", "model": {"family": "cogvideox", "backbone": str(backbone)},
            "data": {"frames": 5, "fps": 8.0, "unseen_conditions": 0, "val_fraction": 0.0, **data},
            "storage": {"uri": "/tmp/unused"}, "registry": {"tracking_uri": "sqlite:////tmp/unused.db"}}
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_synth_report_build_list_verify(tiny_backbones, tmp_path):
    src, shards = tmp_path / "src", tmp_path / "shards"
    out = vap("synth", str(src), "--conditions-per-category", "1", "--clips-per-condition", "2",
              "--frames", "9", "--no-progress")
    assert out.exit_code == 0 and "8 clips of 4 conditions" in out.stdout
    spec = write_spec(tmp_path / "spec.yaml", tiny_backbones["cogvideox"], source=str(src), shards=str(shards))

    out = vap("report", "-c", spec, "--out", str(tmp_path / "report"), "--no-progress")
    assert out.exit_code == 0 and "8 clips valid, 0 rejected" in out.stdout
    assert json.loads((tmp_path / "report" / "report.json").read_text())["pairs"]["train"] == 8

    out = vap("build", "-c", spec, "--no-progress")
    assert out.exit_code == 0 and "built" in out.stdout and "train 8" in out.stdout
    sid = (shards / "LATEST").read_text().strip()
    assert vap("build", "-c", spec, "--no-progress").stdout.startswith(f"snapshot {sid} up to date")

    listing = vap("list", "-c", spec).stdout
    assert listing.startswith(f"* {sid}") and "train 8" in listing
    assert "shard files ok" in vap("verify", "--shards", str(shards), sid).stdout


def test_help_describes_every_command():
    out = vap("--help").stdout
    for command in ("synth", "report", "build", "list", "verify"):
        assert command in out
    assert "--force" in vap("build", "--help").stdout


def test_errors_are_one_line_and_exit_2(tiny_backbones, tmp_path, monkeypatch, capsys):
    from vap.cli import main

    spec = write_spec(tmp_path / "spec.yaml", tiny_backbones["cogvideox"], shards=str(tmp_path / "shards"))
    for argv, message in ((["data", "build", "-c", spec], "error: data.source is not set"),
                          (["data", "list", str(tmp_path / "none")], "no snapshots; run `vap data build`")):
        monkeypatch.setattr(sys, "argv", ["vap", *argv])
        with pytest.raises(SystemExit) as exit_:
            main()
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and "Traceback" not in "\n".join(err)
