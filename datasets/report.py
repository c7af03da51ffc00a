"""The dataset report: what went into a snapshot and what was quarantined, and why.

`write_report` writes `report.json`, `quarantine.csv` and `distribution.png` to one folder;
the trainer logs that folder to MLflow with every run that trains on the snapshot.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from pathlib import Path

from vap.datasets.records import CATEGORIES, UNCATEGORIZED, IngestResult, Pair

log = logging.getLogger(__name__)


def build_report(result: IngestResult, pairs: dict[str, list[Pair]]) -> dict:
    """Counts per condition, category and split, quarantine reasons, and clips left unpaired."""
    paired = {clip.id for split in pairs.values() for p in split for clip in (p.target, p.reference)}
    shown = (*CATEGORIES, UNCATEGORIZED) if any(c.category == UNCATEGORIZED for c in result.clips) else CATEGORIES
    conditions: dict[str, dict] = {}
    for clip in sorted(result.clips, key=lambda c: (shown.index(c.category), c.condition)):
        entry = conditions.setdefault(clip.condition, {"category": clip.category, "clips": 0,
                                                       "pairs": {s: 0 for s in pairs}})
        entry["clips"] += 1
    for split, split_pairs in pairs.items():
        for p in split_pairs:
            conditions[p.target.condition]["pairs"][split] += 1
    categories = {cat: {"conditions": 0, "clips": 0} for cat in shown}
    for entry in conditions.values():
        categories[entry["category"]]["conditions"] += 1
        categories[entry["category"]]["clips"] += entry["clips"]
    return {
        "clips": {"valid": len(result.clips), "rejected": len(result.rejected),
                  "unpaired": sorted(c.id for c in result.clips if c.id not in paired)},
        "pairs": {split: len(p) for split, p in pairs.items()},
        "unseen_conditions": sorted({p.target.condition for p in pairs.get("unseen", [])}),
        "categories": categories,
        "conditions": conditions,
        "quarantine": result.reasons(),
    }


def write_report(result: IngestResult, pairs: dict[str, list[Pair]], out_dir: Path) -> dict:
    """Write report.json, quarantine.csv (source, reason, detail) and distribution.png (clips per
    condition coloured by category, and quarantine reasons) to `out_dir`; return the report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(result, pairs)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    with (out_dir / "quarantine.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "reason", "detail"])
        writer.writerows((r.source, r.reason, r.detail) for r in result.rejected)
    plot_distribution(report, out_dir / "distribution.png")
    log.info("dataset report in %s: %d clips, %d rejected %s", out_dir, report["clips"]["valid"],
             report["clips"]["rejected"], report["quarantine"])
    return report


def plot_distribution(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in tests
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colors = dict(zip(report["categories"], ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:gray"),
                      strict=False))
    names = list(report["conditions"])
    reasons = Counter(report["quarantine"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(6, 0.35 * len(names) + 4), 4),
                                      gridspec_kw={"width_ratios": [max(len(names), 1), max(len(reasons), 2)]})
    left.bar(range(len(names)), [report["conditions"][n]["clips"] for n in names],
             color=[colors[report["conditions"][n]["category"]] for n in names])
    left.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    left.set_ylabel("valid clips")
    left.set_title(f"{report['clips']['valid']} clips, {len(names)} conditions")
    left.set_ylim(0, 1.3 * max([report["conditions"][n]["clips"] for n in names] or [1]))  # room for the legend
    left.legend(handles=[Patch(color=color, label=f"{cat} ({report['categories'][cat]['clips']})")
                         for cat, color in colors.items()], fontsize=7, ncols=4, loc="upper center")
    if reasons:
        right.bar(range(len(reasons)), list(reasons.values()), color="tab:gray")
        right.set_xticks(range(len(reasons)), list(reasons), rotation=90, fontsize=7)
    else:  # an empty bar chart would show a meaningless axis
        right.text(0.5, 0.5, "none", ha="center", va="center", transform=right.transAxes)
        right.set_axis_off()
    right.set_title(f"quarantined: {report['clips']['rejected']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
