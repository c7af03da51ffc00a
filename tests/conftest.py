"""Shared fixtures: one real S3 server (moto over HTTP), one MLflow tracking server and one
local Ray cluster per test session — starting them per test would cost minutes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The MLflow servers tests start need no server-side jobs (GenAI judges): without them each
# start spawns 2 processes instead of 10 and uses about half the CPU (docs/TESTING.md).
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


if REPO.name == "mutants":  # `make mutate`: mutmut's copy of the tree (docs/TESTING.md).
    # The editable install maps every vap.* package to the work tree, but mutmut copies only the
    # mutated files and names their mutants by file path (training.rope.x_…, platform.gate.x_…).
    # So every import of a vap module whose file the copy holds (also one inside another module,
    # whatever the order) loads the copy's file, under the path-derived name mutmut's
    # trampolines compare against: the mutants are what the tests exercise. The package → folder
    # mapping is setuptools' package-dir in pyproject.toml (vap → platform/, vap.training →
    # training/, ...); `import platform` / `import datasets` stay the stdlib's and HF's.
    import importlib.machinery
    import importlib.util
    import tomllib

    _PACKAGE_DIRS = sorted(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
                           ["package-dir"].items(), key=lambda item: -len(item[0]))  # longest first

    def _copied_file(name: str) -> Path | None:
        for package, folder in _PACKAGE_DIRS:
            if name == package or name.startswith(package + "."):
                stem = Path(folder, *name[len(package):].split(".")[1:])
                for rel in (stem.with_suffix(".py"), stem / "__init__.py"):
                    if (REPO / rel).is_file():
                        return rel
                return None
        return None

    class _CopyLoader(importlib.machinery.SourceFileLoader):
        def __init__(self, name: str, rel: Path):
            super().__init__(name, str(REPO / rel))
            self.mutmut_name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")

        def exec_module(self, module):
            # functions take __module__ from the globals' __name__ when defined: give them
            # mutmut's name; relative imports keep resolving through __package__ (vap.…)
            module.__name__ = self.mutmut_name
            sys.modules.setdefault(self.mutmut_name, module)  # for lookups by __module__
            exec(self.get_code(self.name), module.__dict__)

    class _CopyFirst:
        def find_spec(self, name, path=None, target=None):
            rel = _copied_file(name)
            if rel is None:
                return None
            search = None
            if rel.name == "__init__.py":  # a package: its other submodules stay where they were
                original = next(filter(None, (f.find_spec(name, path, target) for f in sys.meta_path
                                              if f is not self and hasattr(f, "find_spec"))), None)
                search = list(original.submodule_search_locations) if original else []
            return importlib.util.spec_from_file_location(name, REPO / rel, loader=_CopyLoader(name, rel),
                                                          submodule_search_locations=search)

    sys.meta_path.insert(0, _CopyFirst())


# The servers a test needs, read off the session fixtures it uses (directly or through another
# fixture): `pytest -m "not ray"` deselects every test that starts the Ray cluster.
SERVER_MARKERS = {"s3_server": "s3", "mlflow_server": "mlflow", "ray_cluster": "ray"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's hook reads the xdist_group marks
def pytest_collection_modifyitems(items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        for fixture in set(SERVER_MARKERS) & fixtures:
            item.add_marker(SERVER_MARKERS[fixture])
        # `pytest -n 2 --dist loadgroup` (make test): the slow tests and those on the Ray cluster
        # run in turn on one worker, never two Ray / DeepSpeed jobs side by side on 2 cores; the
        # others by module, as a module's tests may share fixed names (a spec name is the
        # trainer's and vap eval's streaming cache under /tmp/vap-streaming/<name>)
        heavy = "ray_cluster" in fixtures or item.get_closest_marker("slow")
        item.add_marker(pytest.mark.xdist_group("heavy" if heavy else item.nodeid.split("::")[0]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{what} not ready at {url} after {timeout}s")


def _start(cmd: list[str], url: str, what: str, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_http(url, proc, what)
    return proc


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core machine they thrash
    (measured 10–20× slower with two threads while other work runs)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 endpoint on a free loopback port; exports the standard endpoint variables."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = _start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], url + "/moto-api/", "moto S3 server", log)
    env = {
        "AWS_ENDPOINT_URL": url, "S3_ENDPOINT_URL": url, "MLFLOW_S3_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield url
    proc.terminate()
    proc.wait(10)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def s3_bucket(s3_server, request):
    """A fresh bucket per test: s3://<name>."""
    import boto3

    name = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-") + f"-{os.getpid() % 1000}"
    name = "".join(c for c in name if c.isalnum() or c == "-")
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory):
    """A real MLflow tracking server (sqlite store, artifacts proxied to the S3 server)."""
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="mlflow-artifacts")
    port = free_port()
    root = tmp_path_factory.mktemp("mlflow")
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
           "--artifacts-destination", "s3://mlflow-artifacts/", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    proc = _start(cmd, url + "/health", "MLflow server", root / "mlflow.log")
    yield url
    proc.terminate()
    proc.wait(20)


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """One local Ray cluster for the session (ray.init costs 5–14 s on 2 cores). Started after
    the S3 server so its workers inherit the endpoint and credentials, as pods get them from env."""
    import ray

    # Workers inherit the driver's environment (S3 endpoint, DS_ACCELERATOR).
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory):
    """Tiny random backbones of both families in the real hub layout."""
    from vap.training.tiny import make_tiny_backbone

    root = tmp_path_factory.mktemp("backbones")
    return {fam: make_tiny_backbone(fam, root / f"tiny-{fam}") for fam in ("cogvideox", "wan")}
