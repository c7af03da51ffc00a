"""The README's benchmark table is rebuilt from the suites' results JSON and results/runs.json
alone (`benchmarks/run_all.py --collect`): each suite's line says which run its ratios come from,
and a time ratio measured on a machine busier than its cores is marked `?`, not ✓ or ✗."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import run_all  # noqa: E402


def _run(load: float, ok: bool = True) -> dict:
    return {"script": "bench_train.py", "args": ["--quick"], "ok": ok, "seconds": 600, "cpus": 2,
            "machine": "x86_64", "python": "3.11.7", "load_avg_1m": load, "date": "2026-12-04", "time": "21:50 UTC"}


@pytest.fixture()
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(run_all, "RESULTS", tmp_path)
    monkeypatch.setattr(run_all, "RUNS", tmp_path / "runs.json")
    (tmp_path / "train.json").write_text(json.dumps({
        "P2": {"ratio": 0.95}, "P5": {"ratio": 1.119, "ratio_optimizer_partitions": 1.012}}))
    return tmp_path


def _table(results: Path, runs: dict) -> list[str]:
    (results / "runs.json").write_text(json.dumps(runs))
    return run_all.table(run_all.rows(), run_all.machine()).splitlines()


def _row(lines: list[str], start: str) -> list[str]:
    return next(line for line in lines if line.startswith(start)).split(" | ")


def test_each_suite_line_names_its_run_and_the_ratios_it_gave(results):
    lines = _table(results, {"train": _run(1.5)})
    assert "- P2, P5: 2026-12-04 21:50 UTC, `bench_train.py --quick`, load 1.5" in lines
    assert not any(line.startswith("- P1") for line in lines)  # no data.json: no line, its rows "not run"
    assert _row(lines, "| P1 ")[2] == "not run"
    assert _row(lines, "| P2 ")[2:] == ["0.95", "≥ 0.9", "✓ |"]
    p5 = [line.split(" | ")[2:] for line in lines if line.startswith("| P5 ")]
    assert p5 == [["1.12", "≈ 1.0", "✗ |"], ["1.01", "≈ 1.0", "✓ |"]]


def test_a_time_ratio_of_an_overloaded_run_is_marked_unknown_and_a_byte_ratio_is_not(results):
    lines = _table(results, {"train": _run(14.2)})
    assert any("load 14.2 (busier than its 2 cores" in line for line in lines)
    assert _row(lines, "| P2 ")[-1] == "? |"
    assert [line.split(" | ")[-1] for line in lines if line.startswith("| P5 ")] == ["✗ |", "✓ |"]


def test_a_failed_run_and_a_suite_never_recorded_say_so(results):
    assert any(line.endswith(", FAILED: ratios from an earlier run") for line in _table(results, {"train": _run(1, False)}))
    assert "- P2, P5: run not recorded" in _table(results, {})


def test_running_a_suite_records_it(results):
    run_all.record_run("train", ["--quick"], 12.3, True)
    run_all.record_run("decode", ["--quick"], 4.0, False)
    runs = json.loads((results / "runs.json").read_text())
    assert runs["train"]["script"] == "bench_train.py" and runs["train"]["seconds"] == 12
    assert runs["train"]["ok"] and not runs["decode"]["ok"] and runs["decode"]["cpus"] >= 1
