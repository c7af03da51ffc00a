"""The repo's folders are named as users asked (`platform/`, `datasets/`), which are also the
names of the standard library's `platform` and Hugging Face's `datasets`: guard the imports."""

import subprocess
import sys

from conftest import REPO


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_stdlib_platform_and_torch_import_from_repo_root():
    out = _run("import platform, torch; print(platform.__file__); print(platform.system())")
    assert out.returncode == 0, out.stderr
    path, system = out.stdout.split()
    assert "/lib/python3" in path and path.endswith("platform.py"), path
    assert system == "Linux"


def test_project_package_imports_from_repo_root():
    out = _run("import vap.spec, vap.storage, vap.cli, vap.training, vap.datasets.records; print(vap.spec.__file__)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(REPO / "platform" / "spec.py")


def test_shadowing_folders_have_no_init():
    for folder in ("platform", "datasets"):
        assert not (REPO / folder / "__init__.py").exists(), f"{folder}/__init__.py shadows a well-known module"


def test_vap_cli_help_is_fast_and_lists_commands():
    out = subprocess.run([str(REPO / ".venv/bin/vap"), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for cmd in ("spec", "data", "train", "promote", "demo", "model", "k8s"):
        assert cmd in out.stdout
