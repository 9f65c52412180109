"""``shardq result --plot FILE``: a job's metric curves per round, drawn with matplotlib.

One panel per metric: the round's weighted mean as a line, the shards' min to max as a band
(the same numbers the dashboard's curves show, from the manifest's round summaries).
matplotlib is optional (requirements-dashboard.txt); without it ``PlotError`` names the fix.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

INSTALL_HINT = "install it with `make dashboard` (or .venv/bin/pip install -r requirements-dashboard.txt)"


class PlotError(ValueError):
    """The plot cannot be drawn; the message says why and what to do."""


def metric_series(rounds: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Per metric: the rounds (1-based) that report it and their mean, min and max."""
    series: dict[str, dict[str, list[float]]] = {}
    for summary in sorted(rounds, key=lambda r: int(r["round"])):
        for name, stats in sorted((summary.get("metrics") or {}).items()):
            s = series.setdefault(name, {"round": [], "mean": [], "min": [], "max": []})
            s["round"].append(int(summary["round"]) + 1)
            for key in ("mean", "min", "max"):
                s[key].append(float(stats[key]))
    return series


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotError(f"--plot needs matplotlib, which is not installed; {INSTALL_HINT}") from None
    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    return plt


def plot_manifest(manifest: dict[str, Any], path: str | Path) -> Path:
    """Draw the metric curves of a result manifest into ``path`` (format from its suffix: .png, .svg, .pdf).

    Raises ``PlotError`` when matplotlib is missing, the job has no metrics, or the suffix is
    not an image format.
    """
    target = Path(path)
    series = metric_series(manifest.get("rounds") or [])
    if not series:
        raise PlotError(
            f"job {manifest.get('job_id')} recorded no metrics per round; there is nothing to plot"
        )
    plt = _pyplot()
    fmt = target.suffix.lstrip(".").lower()
    formats = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if fmt not in formats:
        raise PlotError(
            f"cannot write {target.name}: give a file ending in one of .{', .'.join(sorted(formats))}"
        )
    cols = min(3, len(series))
    rows = math.ceil(len(series) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, s) in zip(axes.flat, series.items(), strict=False):
        ax.fill_between(s["round"], s["min"], s["max"], alpha=0.2, label="shards min–max")
        ax.plot(s["round"], s["mean"], marker="o", label="weighted mean")
        ax.set_title(name)
        ax.set_xlabel("round")
        ax.set_xticks(s["round"])
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize="small")
    fig.suptitle(f"{manifest.get('job_id')} ({manifest.get('kind')}, {manifest.get('status')})")
    fig.tight_layout()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target, dpi=120)
    except OSError as exc:
        raise PlotError(f"cannot write {target}: {exc.strerror or exc}; choose a writable path") from None
    finally:
        plt.close(fig)
    return target
