"""`make mutate`'s copy (tools/mutate_copy.py): HEAD's files, the [tool.mutmut] table MODULES /
TESTS asked for and nothing else changed, bad paths and a MUTATE_DIR holding the work tree
refused. Oracles: tomllib's parse of the result, `git show HEAD:<file>`."""

from __future__ import annotations

import importlib.util
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("mutate_copy", REPO / "tools" / "mutate_copy.py")
mutate_copy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mutate_copy)

PYPROJECT = """\
[project]
name = "x"

[tool.setuptools.package-dir]
vap = "platform"
"vap.evaluation" = "platform/evaluation"
"vap.training" = "training"

[tool.mutmut]
# a comment in the table
source_paths = ["a.py",
                "b.py"]
pytest_add_cli_args = ["-q"]

[tool.other]
matrix = [
  [1, 2],
]
"""


def test_the_table_is_replaced_and_the_rest_kept_byte_for_byte():
    settings = {"source_paths": ["training/x.py"], "pytest_add_cli_args": ["-q", "-p", "no:cacheprovider"],
                "timeout_multiplier": 2.5, "debug": False, "max_children_note": 'say "hi"'}
    text = mutate_copy.with_table(PYPROJECT, settings)
    parsed, original = tomllib.loads(text), tomllib.loads(PYPROJECT)
    assert parsed["tool"]["mutmut"] == settings
    assert parsed["project"] == original["project"] and parsed["tool"]["other"] == original["tool"]["other"]
    head, _, tail = PYPROJECT.partition("[tool.mutmut]\n")
    rest = tail[tail.index("\n\n[tool.other]"):]  # with the blank line before the next table
    assert text.startswith(head + "[tool.mutmut]\n") and text.endswith(rest)


def test_a_table_at_the_end_of_the_file_is_replaced_too():
    text = mutate_copy.with_table('[a]\nb = 1\n[tool.mutmut]\nsource_paths = ["a.py"]\n', {"source_paths": ["c.py"]})
    assert tomllib.loads(text) == {"a": {"b": 1}, "tool": {"mutmut": {"source_paths": ["c.py"]}}}


def test_a_pyproject_without_the_table_is_refused():
    with pytest.raises(SystemExit, match=r"^error: pyproject.toml has no \[tool.mutmut\] table"):
        mutate_copy.with_table("[project]\nname = 'x'\n", {})


def copy_with(tmp_path: Path, files: list[str]) -> Path:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    return tmp_path


def test_modules_and_tests_replace_the_table_values_and_empty_keeps_them(tmp_path):
    copy = copy_with(tmp_path, ["a.py", "b.py", "m/c.py", "tests/test_c.py"])
    assert mutate_copy.settings_for(copy, [], []) == {"source_paths": ["a.py", "b.py"], "pytest_add_cli_args": ["-q"],
                                                      "also_copy": ["m"]}
    assert mutate_copy.settings_for(copy, ["m/c.py"], ["tests/test_c.py::test_one", "-k", "one"]) == {
        "source_paths": ["m/c.py"], "pytest_add_cli_args": ["-q"], "also_copy": ["m"],
        "pytest_add_cli_args_test_selection": ["tests/test_c.py::test_one", "-k", "one"]}


def test_folders_tests_read_by_path_are_copied_and_the_package_folders_are_not(tmp_path):
    copy = copy_with(tmp_path, ["platform/spec.py", "platform/evaluation/x.py", "training/rope.py", "tests/test_a.py",
                                "examples/demo.yaml", "charts/vap/Chart.yaml", ".ci/run.sh", "README.md"])
    assert mutate_copy.data_folders(copy) == ["charts", "examples"]
    text = PYPROJECT.replace('pytest_add_cli_args = ["-q"]', 'pytest_add_cli_args = ["-q"]\nalso_copy = ["README.md"]')
    (copy / "pyproject.toml").write_text(text)
    assert mutate_copy.settings_for(copy, ["platform/spec.py"], [])["also_copy"] == ["README.md", "charts", "examples"]


@pytest.mark.parametrize(("modules", "tests", "named"), [(["m/gone.py"], [], "MODULES: m/gone.py"),
                                                         ([], ["tests/test_gone.py::t"], "TESTS: tests/test_gone.py"),
                                                         ([], [], "MODULES: b.py")])  # the table's own
def test_a_path_missing_from_the_copy_is_named_with_the_fix(tmp_path, modules, tests, named):
    copy = copy_with(tmp_path, ["a.py"] + (["b.py"] if modules or tests else []))
    with pytest.raises(SystemExit, match=rf"^error: {named} is not in HEAD; commit it or fix the path$"):
        mutate_copy.settings_for(copy, modules, tests)


@pytest.mark.parametrize("where", ["repo", "parent"])
def test_a_copy_folder_holding_the_work_tree_is_refused_before_anything_is_removed(monkeypatch, where):
    removed = []
    monkeypatch.setattr(mutate_copy.shutil, "rmtree", lambda *a, **k: removed.append(a))  # never the real one here
    folder = REPO if where == "repo" else REPO.parent
    with pytest.raises(SystemExit, match=rf"^error: MUTATE_DIR={folder} would remove the work tree"):
        mutate_copy.extract_head(folder)
    assert removed == []


def test_the_copy_is_head_with_the_requested_table(tmp_path, capsys):
    copy = tmp_path / "copy"
    (copy / "stale").mkdir(parents=True)
    (copy / "stale" / "left-over.py").write_text("")  # a previous run's: removed
    mutate_copy.main([str(copy), "--modules", "training/rope.py", "--tests", "tests/test_model_rope.py"])
    head = subprocess.run(["git", "-C", str(REPO), "ls-tree", "-r", "--name-only", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.split()
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file() and "mutants" not in p.parts) == sorted(head)
    assert (copy / "mutants" / ".venv" / "bin" / "python").samefile(REPO / ".venv" / "bin" / "python")
    mutate_copy.extract_head(copy)  # the next run's clean-up removes the link, never what it points to
    assert not (copy / "mutants").exists() and (REPO / ".venv" / "bin" / "python").is_file()
    mutate_copy.main([str(copy), "--modules", "training/rope.py", "--tests", "tests/test_model_rope.py"])
    top_level = [d for d in subprocess.run(["git", "-C", str(REPO), "ls-tree", "-d", "--name-only", "HEAD"], check=True,
                                           capture_output=True, text=True).stdout.split() if not d.startswith(".")]
    for name in ("training/rope.py", "tests/test_model_rope.py", "Makefile"):
        want = subprocess.run(["git", "-C", str(REPO), "show", f"HEAD:{name}"], check=True, capture_output=True).stdout
        assert (copy / name).read_bytes() == want
    table = tomllib.loads((copy / "pyproject.toml").read_text())["tool"]["mutmut"]
    committed = tomllib.loads(subprocess.run(["git", "-C", str(REPO), "show", "HEAD:pyproject.toml"], check=True,
                                             capture_output=True, text=True).stdout)["tool"]["mutmut"]
    assert table == {**committed, "source_paths": ["training/rope.py"],
                     "pytest_add_cli_args_test_selection": ["tests/test_model_rope.py"],
                     "also_copy": sorted(set(top_level) - {"platform", "training", "datasets", "operators", "tests"})}
    assert f"{copy}: mutating training/rope.py with tests/test_model_rope.py" in capsys.readouterr().out
