"""``shardq result --plot FILE``: a job's metric curves per round, drawn with matplotlib.

One panel per metric, the global model's first: what a round's reduce reported of the model it
made, as a bold line, beside the shards' weighted mean and their min to max as a band (the same
numbers the dashboard's curves show, from the manifest's round summaries). A successive-halving
sweep is drawn per trial instead: each trial's objective over the budget of every rung it ran.
A plain sweep (one round of trials) is drawn per trial too, as the dashboard shows it: one panel
per metric, the objective's first, a dot for each trial's value and the best trial ringed (a
round's mean would hide the very spread a sweep is run to see).
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


def global_series(rounds: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Per metric the rounds' reduces reported of the global model: rounds (1-based) and values."""
    series: dict[str, dict[str, list[float]]] = {}
    for summary in sorted(rounds, key=lambda r: int(r["round"])):
        for name, value in sorted(((summary.get("reduce") or {}).get("metrics") or {}).items()):
            s = series.setdefault(name, {"round": [], "value": []})
            s["round"].append(int(summary["round"]) + 1)
            s["value"].append(float(value))
    return series


def trial_series(manifest: dict[str, Any]) -> dict[int, dict[str, list[float]]]:
    """A successive-halving sweep's trials: each one's objective at the budget of every rung it ran."""
    series: dict[int, dict[str, list[float]]] = {}
    for row in manifest.get("leaderboard") or []:
        points = [p for p in row.get("rungs") or [] if p.get("objective") is not None]
        series[int(row["trial"])] = {
            "budget": [float(p["budget"]) for p in points],
            "objective": [float(p["objective"]) for p in points],
        }
    return series


def sweep_points(manifest: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """A plain sweep's leaderboard per metric: each trial (number) and its value, finite values only.

    A diverged trial's non-finite metrics (``"nan"``, ``"inf"``) have no place on an axis; the
    objective's metric comes first."""
    points: dict[str, dict[str, list[float]]] = {}
    for row in sorted(manifest.get("leaderboard") or [], key=lambda r: int(r["trial"])):
        for name, value in sorted((row.get("metrics") or {}).items()):
            if isinstance(value, int | float) and math.isfinite(value):
                p = points.setdefault(name, {"trial": [], "value": []})
                p["trial"].append(int(row["trial"]))
                p["value"].append(float(value))
    metric = (manifest.get("objective") or {}).get("metric")
    return dict(sorted(points.items(), key=lambda item: item[0] != metric))


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
    if manifest.get("early_stopping"):
        return _plot_trials(manifest, target)
    if manifest.get("kind") == "sweep":
        return _plot_sweep(manifest, target)
    rounds = manifest.get("rounds") or []
    series, model = metric_series(rounds), global_series(rounds)
    # The global model's metrics first: they are what a round produced.
    names = [*model, *(n for n in series if n not in model)]
    if not names:
        raise PlotError(
            f"job {manifest.get('job_id')} recorded no metrics per round; there is nothing to plot"
        )
    plt = _pyplot_for(target)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        ticks: set[float] = set()
        if name in series:
            s = series[name]
            ax.fill_between(s["round"], s["min"], s["max"], alpha=0.2, label="shards min–max")
            ax.plot(s["round"], s["mean"], marker="o", label="shards' weighted mean")
            ticks.update(s["round"])
        if name in model:
            g = model[name]
            ax.plot(g["round"], g["value"], marker="s", linewidth=2.5, color="black", label="global model")
            ticks.update(g["round"])
        ax.set_title(f"{name} (global model)" if name in model else name)
        ax.set_xlabel("round")
        ax.set_xticks(sorted(ticks))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    return _save(plt, fig, manifest, target)


def _pyplot_for(target: Path) -> Any:
    """pyplot, once the target's suffix is known to be an image format it writes."""
    plt = _pyplot()
    fmt = target.suffix.lstrip(".").lower()
    formats = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if fmt not in formats:
        raise PlotError(
            f"cannot write {target.name}: give a file ending in one of .{', .'.join(sorted(formats))}"
        )
    return plt


def _plot_trials(manifest: dict[str, Any], target: Path) -> Path:
    """A successive-halving sweep: each trial's objective over its budget, the best one bold."""
    trials = trial_series(manifest)
    if not trials:
        raise PlotError(
            f"job {manifest.get('job_id')} recorded no trial's objective; there is nothing to plot"
        )
    plt = _pyplot_for(target)
    es, objective = manifest["early_stopping"], manifest.get("objective") or {}
    best = (manifest.get("best") or {}).get("trial")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for trial, s in sorted(trials.items()):
        if trial == best:
            ax.plot(
                s["budget"],
                s["objective"],
                marker="o",
                linewidth=2.5,
                color="black",
                label=f"best: trial {trial}",
            )
        else:
            ax.plot(s["budget"], s["objective"], marker=".", alpha=0.5)
    ax.set_xscale(
        "log", base=max(2, int(es["budgets"][1] / es["budgets"][0])) if len(es["budgets"]) > 1 else 10
    )
    ax.set_xticks(es["budgets"], [str(b) for b in es["budgets"]])
    values = [v for s in trials.values() for v in s["objective"]]
    if min(values) > 0 and max(values) > 100 * min(values):
        ax.set_yscale("log")  # early rungs' losses dwarf the last rung's otherwise
    ax.set_xlabel(f"{es.get('budget_param', 'budget')} (rung budget)")
    ax.set_ylabel(objective.get("metric", "objective"))
    ax.set_title(f"{len(trials)} trials over {len(es['budgets'])} rungs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(plt, fig, manifest, target)


def _plot_sweep(manifest: dict[str, Any], target: Path) -> Path:
    """A plain sweep: per metric, a dot for each trial's value; the best trial ringed in black."""
    points = sweep_points(manifest)
    if not points:
        raise PlotError(f"job {manifest.get('job_id')} recorded no trial's metrics; there is nothing to plot")
    plt = _pyplot_for(target)
    best = (manifest.get("best") or {}).get("trial")
    cols = min(3, len(points))
    rows = math.ceil(len(points) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, p) in zip(axes.flat, points.items(), strict=False):
        ax.scatter(p["trial"], p["value"], label="trials")
        if best in p["trial"]:
            at = p["trial"].index(best)
            ax.scatter(
                [best],
                [p["value"][at]],
                s=120,
                facecolors="none",
                edgecolors="black",
                label=f"best: trial {best}",
            )
        objective = (manifest.get("objective") or {}).get("metric")
        ax.set_title(f"{name} (objective)" if name == objective else name)
        ax.set_xlabel("trial")
        ax.set_xticks(sorted(set(p["trial"])))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(points) :]:
        ax.set_visible(False)
    return _save(plt, fig, manifest, target)


def _save(plt: Any, fig: Any, manifest: dict[str, Any], target: Path) -> Path:
    """Title the figure and write it to ``target``."""
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
