"""Hostile job specs: an alias bomb, huge values, recursive aliases, bytes that are not UTF-8 and
URIs that look right but are not — each one short SpecError line, nothing expanded or echoed."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest
import yaml
from conftest import REPO

from vap.errors import SpecError, StorageError
from vap.spec import load_spec, parse_spec, parse_tracking_uri
from vap.storage import parse_uri

EXAMPLE = (REPO / "examples" / "demo.yaml").read_text()
VAP = str(REPO / ".venv/bin/vap")


def bomb(levels: int = 9) -> str:
    """The billion-laughs document: 9 levels of 9 aliases → 9**9 (387 million) strings as `name`."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n" + EXAMPLE.replace("name: vap-demo", f"name: *a{levels - 1}")


def test_alias_bomb_is_refused_before_it_is_expanded(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb())
    assert path.stat().st_size < 2048
    with pytest.raises(SpecError, match=r"anchors/aliases expand to more than 10000 values") as err:
        load_spec(path)
    assert len(str(err.value)) < 300


def test_a_moderate_alias_expansion_is_not_echoed(tmp_path):
    # 6 levels: 531441 strings. Refused by the bound; without it, validation echoed all of them.
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb(6))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert len(str(err.value)) < 300


def test_aliases_that_share_a_small_block_still_work(tmp_path):
    path = tmp_path / "job.yaml"
    text = EXAMPLE.replace("storage:\n  uri: .vap-demo/store/runs", "storage: &where\n  uri: .vap-demo/store/runs")
    path.write_text(text + "x-copy: *where\n")  # an unknown key, refused by name as any other
    with pytest.raises(SpecError, match=r"unknown key 'x-copy'"):
        load_spec(path)
    path.write_text(text)
    assert load_spec(path).storage.uri.endswith(".vap-demo/store/runs")


def test_an_alias_inside_its_own_block_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text(EXAMPLE.replace("name: vap-demo", "name: &n [1, *n]"))
    with pytest.raises(SpecError, match="refers to the block that contains it"):
        load_spec(path)


def test_a_huge_bad_value_is_quoted_as_a_short_prefix(tmp_path):
    data = yaml.safe_load(EXAMPLE)
    data["trainer"]["lr"] = "x" * 1_000_000
    with pytest.raises(SpecError, match=r"'trainer.lr': .* \(got 'x{20,}") as err:
        parse_spec(data, "job.yaml")
    assert len(str(err.value)) < 300
    data = yaml.safe_load(EXAMPLE)
    data["model"]["expert"]["blocks"] = list(range(-100_000, 0))  # one problem per element
    with pytest.raises(SpecError, match=r"and 9999[0-9] more problems$") as err:
        parse_spec(data, "job.yaml")
    assert len(str(err.value)) < 1000


def test_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_bytes(EXAMPLE.encode("utf-16"))
    with pytest.raises(SpecError, match=r"job.yaml: not UTF-8 text \(byte 0xff at offset 0\); save the job spec as UTF-8"):
        load_spec(path)
    path.write_bytes(b"\xef\xbb\xbf" + EXAMPLE.encode())  # a BOM is fine
    assert load_spec(path).name == "vap-demo"


def test_a_file_too_large_for_a_spec_is_refused_unread(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(EXAMPLE + "#" * (2 << 20))
    with pytest.raises(SpecError, match="too large for a job spec"):
        load_spec(path)


def test_spec_check_of_the_bomb_is_one_line_exit_2(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb())
    out = subprocess.run([VAP, "spec", "check", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "aliases expand" in out.stderr


@pytest.mark.parametrize("uri", ["s3:/bucket/x", "s3:bucket/x", "file:/tmp/x", "S3:/x"])
def test_uris_missing_their_slashes_are_refused(uri):
    with pytest.raises(StorageError, match=r"URI without '//'"):
        parse_uri(uri)
    data = yaml.safe_load(EXAMPLE)
    data["storage"]["uri"] = uri
    with pytest.raises(SpecError, match=r"'storage.uri': .*without '//'"):
        parse_spec(data, "job.yaml")


def test_local_paths_that_merely_contain_a_colon_stay_paths():
    assert parse_uri("./s3:x").path.endswith("/s3:x")
    assert parse_uri("runs/2026-12-03T10:00").path.endswith("runs/2026-12-03T10:00")


@pytest.mark.parametrize(("uri", "named"), [("ftp://x", "not an MLflow URI"), ("http://", "names no host"),
                                           ("sqlite:///", "names no database file"),
                                           ("sqlite:///tmp/dir/", "names no database file")])
def test_bad_tracking_uris_are_refused(uri, named):
    from vap.errors import RegistryError

    with pytest.raises(RegistryError, match=named):
        parse_tracking_uri(uri)
    data = yaml.safe_load(EXAMPLE)
    data["registry"]["tracking_uri"] = uri
    with pytest.raises(SpecError, match=named):
        parse_spec(data, "job.yaml")


def test_ctrl_c_while_a_spec_is_read_exits_at_once(tmp_path):
    fifo = tmp_path / "job.yaml"
    os.mkfifo(fifo)  # the spec arrives slowly: the loader is mid-read when Ctrl-C comes
    proc = subprocess.Popen([VAP, "spec", "check", str(fifo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    opened: dict[str, int] = {}
    writer = threading.Thread(target=lambda: opened.setdefault("fd", os.open(fifo, os.O_WRONLY)), daemon=True)
    writer.start()
    writer.join(90)  # returns once vap has opened the spec for reading
    assert "fd" in opened, "vap never opened the spec"
    os.write(opened["fd"], b"name: vap-demo\n")
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        os.close(opened["fd"])
    assert proc.returncode == 130 and "Traceback" not in err, err
