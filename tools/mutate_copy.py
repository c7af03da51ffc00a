"""`make mutate`'s working copy: the committed tree (`git archive HEAD`) in DIR, with the copy's
[tool.mutmut] table set from MODULES / TESTS (docs/TESTING.md).

mutmut 3 reads its settings only from the pyproject.toml (or setup.cfg) of the folder it runs
in, so a module and its tests picked on the command line are written into the copy's table;
the work tree's pyproject.toml is never edited (editing it would also re-key `make setup`).
An option left empty keeps pyproject's own value.

    python tools/mutate_copy.py DIR [--modules "a.py b.py"] [--tests "tests/test_a.py ..."]
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TABLE = "[tool.mutmut]"
HEADER = re.compile(r"^\[\[?[\w.\"' -]+\]\]?\s*(#.*)?$")  # a table header line, not a value


def toml_value(value) -> str:
    """TOML for the value types mutmut's settings use (strings, numbers, booleans, lists of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string (same escapes)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"[tool.mutmut] value {value!r}: only strings, numbers, booleans and lists are written")


def with_table(pyproject: str, settings: dict) -> str:
    """`pyproject` with its [tool.mutmut] table (header to the next table) replaced by `settings`."""
    lines = pyproject.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == TABLE), None)
    if start is None:
        raise SystemExit(f"error: pyproject.toml has no {TABLE} table; add one (docs/TESTING.md)")
    end = next((i for i in range(start + 1, len(lines)) if HEADER.match(lines[i].strip())), len(lines))
    while end > start + 1 and not lines[end - 1].strip():  # keep the blank lines before the next table
        end -= 1
    body = [f"{key} = {toml_value(value)}\n" for key, value in settings.items()]
    return "".join(lines[:start + 1] + body + lines[end:])


def settings_for(copy: Path, modules: list[str], tests: list[str]) -> dict:
    """pyproject's [tool.mutmut] with `modules` / `tests` (when given) in place of its own, each
    path checked in the copy: a path missing there is not committed (or misspelt)."""
    settings = dict(tomllib.loads((copy / "pyproject.toml").read_text())["tool"]["mutmut"])
    if modules:
        settings["source_paths"] = modules
    if tests:
        settings["pytest_add_cli_args_test_selection"] = tests
    for what, key in (("MODULES", "source_paths"), ("TESTS", "pytest_add_cli_args_test_selection")):
        for path in settings.get(key, []):
            file = path.split("::")[0]  # a test may be a node id: tests/test_x.py::test_y
            is_path = file.endswith(".py") or "/" in file  # not an option or its value (-k expr)
            if is_path and not file.startswith("-") and not (copy / file).exists():
                raise SystemExit(f"error: {what}: {file} is not in HEAD; commit it or fix the path")
    settings["also_copy"] = sorted(set(settings.get("also_copy", [])) | set(data_folders(copy)))
    return settings


def data_folders(copy: Path) -> list[str]:
    """The copy's top-level entries that hold no `vap` package (examples/, charts/, docs/, ...).
    mutmut's own copy (`mutants/`) has only the mutated files and tests/, and tests read these by
    path from the repo root; the package folders stay out, so that every module but the mutated
    ones still loads from the work tree (tests/conftest.py's hook)."""
    pyproject = tomllib.loads((copy / "pyproject.toml").read_text())
    packages = {Path(folder).parts[0] for folder in pyproject["tool"]["setuptools"]["package-dir"].values()}
    return [p.name for p in sorted(copy.iterdir())
            if p.is_dir() and not p.name.startswith(".") and p.name not in packages | {"tests", "mutants"}]


def extract_head(copy: Path) -> None:
    """Replace `copy` by the committed tree; refuses the work tree itself or a folder holding it."""
    target = copy.resolve()
    if target == REPO or REPO.is_relative_to(target):
        raise SystemExit(f"error: MUTATE_DIR={copy} would remove the work tree; pick a folder outside it")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")


def link_venv(copy: Path) -> None:
    """The work tree's venv inside mutmut's folder (mutants/, where the tests run), for tests that
    start the CLI by path (REPO/.venv/bin/vap); a link, so mutmut never copies it."""
    if (REPO / ".venv").is_dir():
        (copy / "mutants").mkdir(exist_ok=True)
        (copy / "mutants" / ".venv").symlink_to(REPO / ".venv", target_is_directory=True)


def uncommitted(paths: list[str]) -> list[str]:
    """Those of `paths` whose work-tree file differs from HEAD (the copy runs HEAD's)."""
    files = [f for f in (p.split("::")[0] for p in paths) if (REPO / f).exists()]
    if not files:
        return []
    out = subprocess.run(["git", "-C", str(REPO), "diff", "--name-only", "HEAD", "--", *files],
                         check=True, capture_output=True, text=True).stdout
    return out.split()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="the copy's folder (MUTATE_DIR); replaced")
    parser.add_argument("--modules", default="", help="space-separated source files to mutate (MODULES)")
    parser.add_argument("--tests", default="", help="space-separated tests to run per mutant (TESTS)")
    args = parser.parse_args(argv)
    extract_head(args.dir)
    link_venv(args.dir)
    settings = settings_for(args.dir, shlex.split(args.modules), shlex.split(args.tests))
    pyproject = args.dir / "pyproject.toml"
    pyproject.write_text(with_table(pyproject.read_text(), settings))
    changed = uncommitted(settings["source_paths"] + settings.get("pytest_add_cli_args_test_selection", []))
    if changed:
        print(f"note: uncommitted changes in {' '.join(changed)} are not in the copy (it holds HEAD)", file=sys.stderr)
    print(f"{args.dir}: mutating {' '.join(settings['source_paths'])} with "
          f"{' '.join(settings.get('pytest_add_cli_args_test_selection', [])) or 'every test'}")


if __name__ == "__main__":
    main()
