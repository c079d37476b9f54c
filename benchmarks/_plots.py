"""PNG plots for the report, with matplotlib when it is installed (a bench-only dependency);
without it every function returns None and the report has tables only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def bar_chart(path: Path, title: str, groups: Sequence[tuple[str, dict[str, float]]]) -> Path | None:
    """One horizontal bar panel per group (label -> value), log scale."""
    plt = _pyplot()
    if plt is None or not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 0.5 + 0.5 * max(len(g) for _, g in groups)))
    axes = list(axes) if len(groups) > 1 else [axes]
    for axis, (label, values) in zip(axes, groups, strict=True):
        names = list(values)
        axis.barh(names, [values[name] for name in names], color="tab:blue")
        axis.set_xscale("log")
        axis.set_xlabel(label)
        axis.invert_yaxis()
        for index, name in enumerate(names):
            axis.text(values[name], index, f" {values[name]:,.3g}", va="center", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def percentile_chart(path: Path, title: str, series: Mapping[str, Sequence[float]], unit: str = "us") -> Path | None:
    """Sorted samples of each series against their percentile (a quantile plot), log y."""
    plt = _pyplot()
    if plt is None or not series:
        return None
    fig, axis = plt.subplots(figsize=(8, 4.5))
    for name, samples in series.items():
        if not samples:
            continue
        ordered = sorted(samples)
        count = len(ordered)
        axis.plot([100 * (i + 0.5) / count for i in range(count)], ordered, label=f"{name} (n={count})")
    axis.set_yscale("symlog", linthresh=1)
    axis.set_xlabel("percentile")
    axis.set_ylabel(unit)
    axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def line_chart(
    path: Path, title: str, xlabel: str, ylabel: str, series: dict[str, Sequence[tuple[float, float]]]
) -> Path | None:
    """Lines of (x, y) points, log x."""
    plt = _pyplot()
    if plt is None or not series:
        return None
    fig, axis = plt.subplots(figsize=(7, 4))
    for name, points in series.items():
        axis.plot([x for x, _ in points], [y for _, y in points], marker="o", label=name)
    axis.set_xscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
