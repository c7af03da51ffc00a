"""Plots people would rather look at than read."""

from __future__ import annotations

from pathlib import Path


def plot_loss(series: dict[str, list[tuple[int, float]]], out: Path) -> Path:
    """One line per metric (step, value) → PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for name, points in series.items():
        if points:
            steps, values = zip(*sorted(points), strict=True)
            ax.plot(steps, values, marker="o" if len(points) < 30 else None, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("VAP expert training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
