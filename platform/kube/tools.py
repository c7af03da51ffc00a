"""helm and kubectl: find the pinned binaries and run them (one place for timeouts and the
Helm storage driver, shared by rendering and cluster access)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from vap.errors import KubeError

log = logging.getLogger(__name__)

# Helm keeps release records in ConfigMaps: whoever submits jobs then needs no access to the
# namespace's Secrets (see the platform chart's submitter Role).
HELM_DRIVER = "configmap"


def tool(name: str) -> str:
    """helm / kubectl: the venv's pinned copy (installed by `make setup`) before PATH's."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise KubeError(f"{name} not found: run `make setup` (installs helm v3.19.0 and kubectl v1.34.5 into .venv/bin)")
    return found


def run(cmd: list[str], what: str, timeout: float = 120) -> subprocess.CompletedProcess:
    log.debug("running %s", " ".join(cmd))
    env = {**os.environ, "HELM_DRIVER": os.environ.get("HELM_DRIVER", HELM_DRIVER)}
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise KubeError(f"{what} did not finish in {timeout:.0f} s") from None


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())
