"""The result of `vap eval`: per-pair rows, their means and bootstrap intervals, and its outputs
(the markdown table, JSON, the metrics the registry records, the grid PNG and mp4).

Metric names are docs/EVALUATION.md's: `eval.<split>.<metric>` overall, with `.low` / `.high`
(bootstrap 95 %) beside it, the same per category, and `eval.<split>.<condition>.<metric>`
(means only: a condition holds a few pairs).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vap.evaluation.metrics import bootstrap_ci

# (name, column of the table): the table shows these, in this order
COLUMNS = [
    ("alignment_top1", "VAP top-1"), ("alignment_prob", "VAP prob"),
    ("baseline_backbone.alignment_top1", "backbone top-1"), ("mismatched.alignment_top1", "mismatched top-1"),
    ("copying", "copying"), ("motion_smoothness", "smooth*"), ("dynamic_degree", "dynamic*"),
    ("temporal_flicker", "flicker*"), ("loss", "val loss"),
]


@dataclass
class EvalReport:
    model: str
    split: str
    snapshot: str
    steps: int
    guidance_scale: float
    reference_guidance_scale: float = 0.0
    rows: list[dict] = field(default_factory=list)  # {"pair_id", "condition", "category", "values": {...}}
    recorded_on: str | None = None  # "name version N" once the registry holds the metrics

    def add(self, pair_id: str, condition: str, category: str, values: dict[str, float]) -> None:
        self.rows.append({"pair_id": pair_id, "condition": condition, "category": category, "values": values})

    def groups(self) -> dict[str, list[dict]]:
        """Rows of "overall", of each category and of each condition."""
        out: dict[str, list[dict]] = {"overall": self.rows}
        for key in ("category", "condition"):
            for row in sorted(self.rows, key=lambda r: r[key]):
                out.setdefault(row[key], []).append(row)
        return out

    def summary(self) -> dict[str, dict[str, dict]]:
        """{group: {metric: {"mean", "low", "high", "n"}}}; a metric absent from a group's rows
        (no mismatched reference available) is left out."""
        out = {}
        for group, rows in self.groups().items():
            names = sorted({k for r in rows for k in r["values"]})
            out[group] = {}
            for name in names:
                values = [r["values"][name] for r in rows if name in r["values"]]
                mean, low, high = bootstrap_ci(values)
                out[group][name] = {"mean": mean, "low": low, "high": high, "n": len(values)}
        return out

    def metrics(self) -> dict[str, float]:
        """What the registry records (names in the module doc)."""
        conditions = {r["condition"] for r in self.rows}
        out = {}
        for group, stats in self.summary().items():
            prefix = f"eval.{self.split}." if group == "overall" else f"eval.{self.split}.{group}."
            for name, s in stats.items():
                out[prefix + name] = s["mean"]
                if group not in conditions:
                    out[prefix + name + ".low"], out[prefix + name + ".high"] = s["low"], s["high"]
        return out

    def table(self) -> str:
        """A markdown table: overall and categories as mean [low, high], conditions as means."""
        summary, conditions = self.summary(), {r["condition"] for r in self.rows}
        lines = [f"`vap eval` {self.model} on {self.split} (snapshot {self.snapshot}, {len(self.rows)} pairs, "
                 f"{self.steps} steps, guidance {self.guidance_scale:g}, reference guidance "
                 f"{self.reference_guidance_scale:g}); * = optical-flow proxy",
                 "", "| group | n | " + " | ".join(c for _, c in COLUMNS) + " |",
                 "| --- | --- |" + " --- |" * len(COLUMNS)]
        for group, stats in summary.items():
            cells = []
            for name, _ in COLUMNS:
                s = stats.get(name)
                cells.append("–" if s is None else f"{s['mean']:.3f}" if group in conditions
                             else f"{s['mean']:.3f} [{s['low']:.3f}, {s['high']:.3f}]")
            n = len(self.groups()[group])
            lines.append(f"| {'**overall**' if group == 'overall' else group} | {n} | " + " | ".join(cells) + " |")
        if self.recorded_on:
            lines += ["", f"recorded on {self.recorded_on}"]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "summary": self.summary()}, indent=1)

    def write(self, out_dir: str | Path, grid_rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[Path]:
        """eval-<split>.json, grid-<split>.png and grid-<split>.mp4 in `out_dir`; returns their paths."""
        from PIL import Image

        from vap.datasets.synth import encode_mp4

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = [out / f"eval-{self.split}.json", out / f"grid-{self.split}.png", out / f"grid-{self.split}.mp4"]
        files[0].write_text(self.to_json() + "\n")
        Image.fromarray(grid_image(grid_rows)).save(files[1])
        files[2].write_bytes(encode_mp4(grid_video(grid_rows), 4.0))
        return files


def grid_image(rows) -> np.ndarray:
    """One line per pair: the reference's frames | the generated frames | the ground truth's."""
    lines = [np.concatenate([np.concatenate(list(clip), 1) for clip in row], 1) for row in rows]
    return np.concatenate([np.pad(x, ((0, 2), (0, 0), (0, 0)), constant_values=255) for x in lines], 0)


def grid_video(rows) -> np.ndarray:
    """uint8 [F, H, W, 3]: per frame, one line per pair of reference | generated | ground truth."""
    return np.concatenate([np.concatenate(row, 2) for row in rows], 1)
