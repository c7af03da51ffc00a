"""Registry faults as one line, exit 2, before MLflow is asked: a tracking URI that is not one, a
mistyped sqlite path, a sqlite database in a folder MLflow cannot write, an invalid alias."""

from __future__ import annotations

import os
import sys

import pytest

from vap.errors import RegistryError
from vap.registry import Registry


def vap(monkeypatch, capsys, *argv: str) -> str:
    from vap.cli import main

    monkeypatch.setattr(sys, "argv", ["vap", *argv])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and "Traceback" not in "\n".join(err)
    return err[-1]


def test_a_tracking_uri_that_is_not_one_is_named(monkeypatch, capsys):
    line = vap(monkeypatch, capsys, "promote", "--tracking-uri", "ftp://x", "--model-name", "m")
    assert "'ftp://x' is not an MLflow URI; use http://host:port or sqlite:///path.db" in line


def test_a_mistyped_sqlite_path_is_not_a_new_empty_registry(monkeypatch, capsys, tmp_path):
    db = tmp_path / "mlfow.db"  # the registry is mlflow.db
    line = vap(monkeypatch, capsys, "promote", "--tracking-uri", f"sqlite:///{db}", "--model-name", "m")
    assert f"sqlite:///{db}: no such MLflow database; check the path" in line
    assert not db.exists()
    with pytest.raises(RegistryError, match=r"folder .*/nowhere does not exist"):
        Registry(f"sqlite:///{tmp_path}/nowhere/mlflow.db", "m").check()  # `vap train` creates only the file


def test_sqlite_in_a_folder_mlflow_cannot_write_fails_at_once(tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits; sysfs refuses new entries to anyone
        folder = "/sys"
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        folder = str(tmp_path / "ro")
    with pytest.raises(RegistryError, match=r"MLflow cannot write its database there .*choose a writable folder"):
        Registry(f"sqlite:///{folder}/mlflow.db", "m").check()  # before MLflow's 110 s of retries


@pytest.mark.parametrize("alias", ["bad alias", "latest", "v3", "a/b"])
def test_an_invalid_alias_is_one_line(monkeypatch, capsys, tmp_path, alias):
    line = vap(monkeypatch, capsys, "promote", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
               "--model-name", "m", "--alias", alias)
    assert f"alias {alias!r} is not allowed" in line and "--alias champion" in line
