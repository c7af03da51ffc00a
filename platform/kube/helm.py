"""The charts and `helm template`: where the charts are, render one with values, explain what
the chart's schema or `fail` checks refused as one line per bad key, parse the manifests."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import yaml

from vap.errors import KubeError
from vap.kube.tools import one_line, run, tool

REPO = Path(__file__).resolve().parents[2]
# The repo's charts; the image sets VAP_CHARTS_DIR (it installs vap as a package, without them).
CHARTS = Path(os.environ.get("VAP_CHARTS_DIR") or REPO / "charts")
TRAIN_CHART = CHARTS / "vap-train"
PLATFORM_CHART = CHARTS / "vap-platform"
DEFAULT_NAMESPACE = "vap"


def render(values: dict, release: str, namespace: str = DEFAULT_NAMESPACE, chart: Path = TRAIN_CHART) -> str:
    """`helm template` the chart with these values; the chart's schema and checks refuse bad values."""
    if not (chart / "Chart.yaml").is_file():
        raise KubeError(f"no chart at {chart}: run from a clone of vap-platform or set VAP_CHARTS_DIR to its charts/ folder")
    with tempfile.TemporaryDirectory(prefix="vap-values-") as tmp:
        values_file = Path(tmp) / "values.yaml"
        values_file.write_text(yaml.safe_dump(values, sort_keys=False))
        cmd = [tool("helm"), "template", release, str(chart), "--namespace", namespace, "--values", str(values_file)]
        proc = run(cmd, "helm template")
    if proc.returncode != 0:
        raise KubeError(f"{chart.name}: values refused: {explain_helm_error(proc.stderr)}")
    return proc.stdout


# What a bare `'not' failed` from the schema means, by values path.
_NOT_HINTS = {
    r"image\.tag": "'latest' is refused: pin a version tag or set image.digest",
    r"extraEnv\.\d+\.name": "looks like a credential: reference it from a Secret, never as a plain value",
    r"mlflow\.allowedHosts\.\d+": "'*' would switch off MLflow's Host check: list the host names",
}


def explain_helm_error(stderr: str) -> str:
    """helm's schema / `fail` output as one readable line naming each bad values key."""
    text = one_line(stderr).removeprefix("Error: ")
    text = re.sub(r"values don't meet the specifications of the schema\(s\) in the following chart\(s\): [\w.-]+: ", "", text)
    text = re.sub(r"execution error at \([^)]*\): ", "", text).removesuffix(" Use --debug flag to render out invalid YAML")

    def key(match: re.Match) -> str:
        path = match.group(1).strip("/").replace("/", ".") or "(top level)"
        return f"'{path}':"

    text = re.sub(r"- at '([^']*)':", key, text)
    for pattern, hint in _NOT_HINTS.items():
        text = re.sub(rf"'({pattern})': 'not' failed", rf"'\1': {hint}", text)
    return text


def parse_manifests(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]
