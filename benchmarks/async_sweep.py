"""Sweeps on unequal workers, in one run (issue 27, item 4): shardq's ASHA, shardq's synchronous
successive halving, Optuna's ``SuccessiveHalvingPruner`` and Ray Tune's ``ASHAScheduler``.

Same inputs for all four: ``examples/requests/sweep_halving.json``'s search space and objective
(``examples.linear``, val_loss), shardq's ``--trials`` random points (seed 7; Optuna gets them
enqueued, Ray Tune as a grid over their indices, so trial ``i`` trains the same model bit for bit
everywhere), eta 3 and budgets 1 → 3 → 9 epochs, and ``--workers`` workers whose speeds come from
``benchmarks.async_workload.speed_factors`` (lognormal, seeded; the last one ``--straggler``×
slower). Every rung sleeps ``--unit-s × epochs × its worker's factor`` on top of the real training.

* shardq: the in-process engine over the local cloud (``benchmarks.rounds_local``) with
  ``--workers`` real ``Worker`` threads that read the job table before each task as ``shardq worker``
  does (one GetItem a task; a backup copy whose task is answered is deleted unrun);
  ``early_stopping.method`` ``asha`` and ``successive_halving``;
* Optuna (``make bench-rounds`` / ``make bench-async`` installs it): ``study.optimize`` with
  ``n_jobs = --workers`` threads, worker ``k`` = the ``k``-th thread seen;
* Ray Tune (``make raytune``: its own venv, ``.venv/raytune``), ``benchmarks.async_raytune`` in a
  subprocess: ``max_concurrent_trials = --workers``, each trial holding one worker slot.

Figures per system: seconds to the first fully trained configuration (a rung at ``max_budget``
finished) and its ratio to the time one configuration takes to train fully on the median worker
(``max_budget × unit_s × median factor``: ASHA's target ≤ 1.2); the workers' idle fraction while
work remained (until the last task started) and over the whole run; trial-epochs; the best
val_loss at full budget. Results: ``benchmarks/results/async_sweep.json``; ``--write`` renders
BENCHMARKS.md's section and ``docs/img/async_sweep.png`` (``benchmarks.async_report``).

    .venv/bin/python -m benchmarks.async_sweep [--trials 27] [--unit-s 0.5] [--workers 4] [--repeat N]
        [--write]

``--repeat N`` runs every system N times on the same seeds (speeds, points): each row then shows its
figures' median and range, and the verdicts judge the median and say how many runs met each target.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import async_workload as wl
from benchmarks._common import ROOT, describe, load, machine
from benchmarks.rounds_local import LocalRun
from shardq.core import search
from shardq.core.contracts import TrainingRequest
from shardq.core.request_fields import EARLY_STOPPING_METHODS
from shardq.local.cloud import LocalCloud

SWEEP_REQUEST = ROOT / "examples" / "requests" / "sweep_halving.json"
RESULTS = ROOT / "benchmarks" / "results" / "async_sweep.json"
RAYTUNE_PY = ROOT / ".venv" / "raytune" / "bin" / "python"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=27)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--unit-s", type=float, default=0.5, help="seconds per epoch at factor 1")
    parser.add_argument("--seed", type=int, default=0, help="seed of the workers' speeds")
    parser.add_argument("--sigma", type=float, default=wl.SIGMA, help="lognormal sigma of the speeds")
    parser.add_argument("--straggler", type=float, default=wl.STRAGGLER, help="the last worker's slowdown")
    parser.add_argument(
        "--systems", nargs="+", default=["asha", "halving", "optuna", "raytune"],
        choices=["asha", "halving", "optuna", "raytune"],
    )  # fmt: skip
    parser.add_argument(
        "--asha-parallel", type=int, default=8,
        help="also run ASHA with this max_parallel (a task waiting per worker; 0: only one per worker)",
    )  # fmt: skip
    parser.add_argument(
        "--promotion", nargs="+", default=["paper", "eager"], choices=["paper", "eager"],
        help="ASHA's promotion rules to run (early_stopping.promotion), a row each",
    )  # fmt: skip
    parser.add_argument(
        "--repeat", type=int, default=1,
        help="run every system this many times (same seeds); a row shows each figure's median and range",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=600.0, help="per system, seconds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md and the PNG")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1 (runs of every system), got {args.repeat}")
    return args


def base_request(args: argparse.Namespace, speeds: list[float]) -> dict[str, Any]:
    """The example's halving sweep on the unequal workers (``speeds``), ``args.trials`` trials."""
    req = json.loads(SWEEP_REQUEST.read_text())
    req["search"]["num_trials"] = args.trials
    req["hyperparameters"] = {**req["hyperparameters"], "unit_s": args.unit_s, "speeds": speeds}
    req["entrypoint"] = "benchmarks.async_workload:sweep_train"
    return req


def spec(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the four systems share: points, budgets, speeds, the dataset and base hyperparameters."""
    speeds = wl.speed_factors(args.workers, seed=args.seed, sigma=args.sigma, straggler=args.straggler)
    req = base_request(args, speeds)
    request = TrainingRequest.from_dict(req)
    es = request.early_stopping
    assert es is not None
    return {
        "request": req,
        "speeds": speeds,
        "unit_s": args.unit_s,
        "workers": args.workers,
        "budgets": es.budgets,
        "eta": es.eta,
        "points": [search.trial_params(request, i) for i in range(request.task_count)],
        "base": {
            "uri": req["dataset"]["uri"],
            "num_samples": req["dataset"]["num_samples"],
            "hyperparameters": {"batch_size": req["hyperparameters"]["batch_size"]},
        },
        # One configuration trained fully on the median worker, nominal (sleep only): ASHA's yardstick.
        "one_full_s": es.max_budget * args.unit_s * statistics.median(speeds),
    }


def figures(s: dict[str, Any], intervals: list[dict[str, Any]], t0: float) -> dict[str, Any]:
    """Time to the first full configuration, idle fractions, makespan and trial-epochs from busy intervals."""
    last = len(s["budgets"]) - 1
    full = [r for r in intervals if r["rung"] == last]
    first_full = min((r["end"] for r in full), default=None)
    last_start = max((r["start"] for r in intervals), default=t0)
    end = max((r["end"] for r in intervals), default=t0)
    duplicates = _duplicates(intervals)
    first_s = None if first_full is None else first_full - t0
    return {
        "first_full_s": None if first_s is None else round(first_s, 2),
        "first_full_ratio": None if first_s is None else round(first_s / s["one_full_s"], 3),
        "idle_while_work": _round(wl.idle_fraction(intervals, s["workers"], t0, last_start)),
        "idle_total": _round(wl.idle_fraction(intervals, s["workers"], t0, end)),
        "makespan_s": round(end - t0, 2),
        "first_task_s": round(min((r["start"] for r in intervals), default=t0) - t0, 2),
        # Each trial's rungs once: a task run twice (a backup copy, ``shardq.core.async_backup``)
        # trained one rung; the copies that ended later and their worker-seconds are apart.
        "trial_epochs": sum(r["epochs"] for r in intervals) - sum(r["epochs"] for r in duplicates),
        "tasks": len(intervals),
        "duplicate_copies": len(duplicates),
        "duplicate_s": round(sum(r["end"] - r["start"] for r in duplicates), 2),
        "trials_at_budget": {
            b: len({r["trial"] for r in intervals if r["rung"] >= k}) for k, b in enumerate(s["budgets"])
        },
        "intervals": [
            {**r, "start": round(r["start"] - t0, 3), "end": round(r["end"] - t0, 3)} for r in intervals
        ],
    }


def _duplicates(intervals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The busy intervals of a task's copies beyond the one that ended first."""
    by_task: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in intervals:
        by_task.setdefault((r["trial"], r["rung"]), []).append(r)
    return [r for rows in by_task.values() for r in sorted(rows, key=lambda r: r["end"])[1:]]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def best_full(values: dict[int, list[float]], budgets: list[int]) -> tuple[int | None, float | None]:
    """The trial with the lowest val_loss at the last budget (values: trial → its rungs' values)."""
    full = {t: v[-1] for t, v in values.items() if len(v) == len(budgets)}
    if not full:
        return None, None
    trial = min(full, key=lambda t: (full[t], t))
    return trial, full[trial]


# --- shardq --------------------------------------------------------------------------------------


def asha_available() -> bool:
    """Whether this shardq accepts ``early_stopping.method: "asha"`` (issue 27, item 1)."""
    return "asha" in EARLY_STOPPING_METHODS


def run_shardq(
    cloud: LocalCloud,
    s: dict[str, Any],
    method: str,
    timeout: float,
    parallel: int | None = None,
    promotion: str = "paper",
) -> dict[str, Any]:
    """One sweep through the engine with ``method``; its figures, from the workload's busy intervals.

    ``promotion``: ASHA's rule (``early_stopping.promotion``: ``paper`` or ``eager``).

    ``parallel``: the request's ``max_parallel``. ASHA keeps that many tasks in flight; by default
    one per worker, so a free worker takes the next promotion or trial (more keep a task waiting in
    the queue, hiding the result's round trip, at the cost of drawing trials before promotions are
    known). Synchronous halving defaults to one FIFO lane per trial (its best case: no task waits in
    a message group behind the straggler's).
    """
    req = json.loads(json.dumps(s["request"]))
    req["early_stopping"]["method"] = method
    if method == "asha" and promotion != "paper":
        req["early_stopping"]["promotion"] = promotion
    default = s["workers"] if method == "asha" else max(s["workers"], len(s["points"]))
    req["max_parallel"] = parallel or default
    req["job_id"] = f"async-sweep-{method}-{os.getpid()}-{int(time.time())}"
    # The workers read the job table before each task, as deployed ones do (an answered backup copy
    # is then deleted unrun): the per-task figures are a real worker's.
    with LocalRun(cloud, workers=s["workers"], job_checks=True) as run:
        wl.BUSY.intervals.clear()
        wl.ABORT.clear()
        t0 = time.time()
        try:
            line = run.run(req, timeout=timeout)
        finally:
            ended = time.time()
            wl.ABORT.set()
    # Read once the workers are joined: a task cut short when the job ended (a backup's losing
    # copy, still running on the slow worker) kept that worker busy until then, and its interval
    # is written as it stops; clipped at the job's end, and none that a worker began after it
    # (a cut-short task handed back and received again before its worker stopped).
    intervals = [{**r, "end": min(r["end"], ended)} for r in wl.BUSY.intervals if r["start"] < ended]
    out = figures(s, intervals, t0)
    values: dict[int, list[float]] = {}
    for row in line.manifest.get("leaderboard", []):
        values[row["trial"]] = [h["objective"] for h in row.get("rungs", [])]
    trial, best = best_full(values, s["budgets"])
    out["values"] = values
    manifest_best = line.manifest.get("best") or {}
    out.update(
        system=f"shardq {method.replace('_', ' ')}"
        + (f", {promotion} promotion" if method == "asha" and promotion != "paper" else "")
        + (f", max_parallel {parallel}" if parallel else ""),
        promotion=promotion if method == "asha" else None,
        status=line.status,
        error=line.error,
        job_done_s=line.finished_s,
        best_trial=trial,
        best_objective=best,
        manifest_best_trial=manifest_best.get("trial"),
        budget_spent=line.manifest.get("early_stopping", {}).get("budget_spent"),
        t0=t0,
    )
    return out


# --- Optuna --------------------------------------------------------------------------------------


def optuna_available() -> bool:
    try:
        import optuna  # noqa: F401
    except ImportError:
        return False
    return True


def run_optuna(s: dict[str, Any]) -> dict[str, Any]:
    """``SuccessiveHalvingPruner`` with ``n_jobs = workers`` threads on shardq's points."""
    import optuna

    from benchmarks.rounds_peer import _suggest, train_rung

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=optuna.pruners.SuccessiveHalvingPruner(
            min_resource=s["budgets"][0], reduction_factor=s["eta"], min_early_stopping_rate=0
        ),
    )
    index = {json.dumps(p, sort_keys=True): i for i, p in enumerate(s["points"])}
    for point in s["points"]:
        study.enqueue_trial(point)
    threads: dict[int, int] = {}
    lock = threading.Lock()
    busy = wl.Busy()
    values: dict[int, list[float]] = {}

    def worker() -> int:
        with lock:
            return threads.setdefault(threading.get_ident(), len(threads))

    with tempfile.TemporaryDirectory(prefix="shardq-async-optuna-") as tmp:

        def objective(trial: Any) -> float:
            # The enqueued point, suggested in the space's terms (Optuna records the distributions).
            params = _suggest(trial, s["request"]["search_space"])
            t = index[json.dumps(params, sort_keys=True)]
            w, model, done, value = worker(), None, 0, float("nan")
            for rung, budget in enumerate(s["budgets"]):
                out = Path(tmp) / f"trial-{t}" / f"rung-{rung}"
                with busy.task(w, trial=t, rung=rung, epochs=budget - done):
                    time.sleep(s["unit_s"] * (budget - done) * s["speeds"][w])
                    value = train_rung(s["base"], params, t, rung, budget - done, model, out)
                model, done = out / "model.npz", budget
                values.setdefault(t, []).append(value)
                trial.report(value, step=budget)
                if rung < len(s["budgets"]) - 1 and trial.should_prune():
                    raise optuna.TrialPruned()
            return value

        t0 = time.time()
        study.optimize(objective, n_trials=len(s["points"]), n_jobs=s["workers"])
    out = figures(s, busy.intervals, t0)
    trial, best = best_full(values, s["budgets"])
    out["values"] = values
    out.update(system=f"Optuna {optuna.__version__} SuccessiveHalvingPruner", best_trial=trial,
               best_objective=best, threads=len(threads))  # fmt: skip
    return out


# --- Ray Tune ------------------------------------------------------------------------------------


def raytune_available() -> str | None:
    """None when the Ray Tune venv imports ``ray.tune``, else why not."""
    if not RAYTUNE_PY.exists():
        return f"{RAYTUNE_PY.relative_to(ROOT)} not found: run `make raytune`"
    check = subprocess.run(
        [str(RAYTUNE_PY), "-c", "import ray.tune, numpy"], check=False, capture_output=True, text=True
    )
    return (
        None if check.returncode == 0 else f"ray.tune does not import in .venv/raytune: {check.stderr[-300:]}"
    )


def run_raytune(s: dict[str, Any], timeout: float) -> dict[str, Any]:
    """``benchmarks.async_raytune`` in the Ray Tune venv; its figures from the intervals it logged."""
    with tempfile.TemporaryDirectory(prefix="shardq-async-raytune-") as tmp:
        work = Path(tmp)
        (work / "spec.json").write_text(json.dumps({k: v for k, v in s.items() if k != "request"}))
        log = work / "raytune.log"
        with log.open("w") as f:
            proc = subprocess.run(
                [str(RAYTUNE_PY), "-m", "benchmarks.async_raytune", str(work)],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=f, stderr=subprocess.STDOUT,
                timeout=timeout, check=False,
            )  # fmt: skip
        if proc.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
            raise RuntimeError(f"the Ray Tune run failed (exit {proc.returncode}):\n{tail}")
        meta = json.loads((work / "result.json").read_text())
        intervals = wl.Busy.read(work / "busy.jsonl")
    # Timed from the first trial's start: before it Ray starts its worker processes (actors), as
    # shardq's and Optuna's workers are started before their clocks start; reported apart.
    t0 = min((r["start"] for r in intervals), default=meta["t0"])
    out = figures(s, intervals, t0)
    values = {int(t): v for t, v in meta["values"].items()}
    trial, best = best_full(values, s["budgets"])
    out["values"] = values
    out.update(system=f"Ray Tune {meta['ray']} ASHAScheduler", best_trial=trial, best_objective=best,
               startup_s=round(meta["ray_init_s"] + t0 - meta["t0"], 1))  # fmt: skip
    return out


# --- the run -------------------------------------------------------------------------------------


# The figures a repeated row gives as the median of its runs (with their range, ``ranges``).
REPEATED = ("first_full_s", "first_full_ratio", "idle_while_work", "idle_total", "makespan_s", "trial_epochs")


def combine(repeats: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per system from its ``--repeat`` runs: the run whose idle fraction while work remained
    is the median (its intervals, values and counts: the plot's), with each of ``REPEATED`` the
    median over the runs, ``ranges`` their min and max, and ``repeats`` every run's figures and
    busy intervals."""
    by_system: dict[str, list[dict[str, Any]]] = {}
    for runs in repeats:
        for r in runs:
            by_system.setdefault(r["system"], []).append(r)
    rows = []
    for rs in by_system.values():
        ordered = sorted(rs, key=lambda r: (r["idle_while_work"] is None, r["idle_while_work"] or 0.0))
        row = dict(ordered[(len(ordered) - 1) // 2])
        # Every run's figures and busy intervals (a run's idle time is located from its intervals).
        row["repeats"] = [
            {k: r[k] for k in (*REPEATED, "duplicate_copies", "duplicate_s", "intervals")} for r in rs
        ]
        row["plotted"] = {k: row[k] for k in REPEATED}  # the figures of the run whose intervals these are
        row["ranges"] = {}
        for key in REPEATED:
            known = [r[key] for r in rs if r[key] is not None]
            row[key] = round(statistics.median(known), 4) if known else None
            row["ranges"][key] = [min(known), max(known)] if known else None
        rows.append(row)
    return rows


def run_all(args: argparse.Namespace, cloud: LocalCloud | None = None) -> dict[str, Any]:
    """Every system in ``args.systems`` (the unavailable ones skipped, with why) on the same spec,
    ``args.repeat`` times; one row per system (``combine``)."""
    started = time.time()
    repeats: list[list[dict[str, Any]]] = []
    skipped: dict[str, str] = {}
    problems: list[str] = []
    once: dict[str, Any] = {}
    for n in range(args.repeat):
        if args.repeat > 1:
            print(f"-- repeat {n + 1} of {args.repeat}", flush=True)
        with contextlib.ExitStack() as stack:
            # A fresh local cloud each repeat (the given one, a test's, is shared): every repeat
            # starts from the same empty emulator, not one holding the earlier repeats' resources.
            here = cloud
            if here is None and {"asha", "halving"} & set(args.systems):
                here = stack.enter_context(LocalCloud())
            once = run_once(args, here)
        repeats.append(once["runs"])
        skipped.update(once["skipped"])
        problems += [p if args.repeat == 1 else f"repeat {n + 1}: {p}" for p in once["problems"]]
    return {
        **once,
        "runs": combine(repeats),
        "repeat": args.repeat,
        "skipped": skipped,
        "problems": problems,
        "seconds": round(time.time() - started, 1),
        "load_after": load(),
    }


def run_once(args: argparse.Namespace, cloud: LocalCloud | None) -> dict[str, Any]:
    """Every system in ``args.systems`` once (the unavailable ones skipped, with why) on the same
    spec; shardq's on ``cloud`` (None: none of shardq's systems selected)."""
    s = spec(args)
    runs: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    problems: list[str] = []

    def shardq(c: LocalCloud) -> None:
        for name, method in (("asha", "asha"), ("halving", "successive_halving")):
            if name not in args.systems:
                continue
            if method == "asha" and not asha_available():
                skipped[name] = 'this shardq has no early_stopping.method "asha" yet'
                continue
            extra = [args.asha_parallel] if method == "asha" and args.asha_parallel else []
            promotions = args.promotion if method == "asha" else ["paper"]
            for promotion in promotions:
                for parallel in [None, *extra]:
                    row = run_shardq(c, s, method, args.timeout, parallel, promotion)
                    if row["status"] != "SUCCEEDED":
                        problems.append(f"{row['system']} ended {row['status']}: {row['error']}")
                    runs.append(row)
                    print(f"{row['system']}: first full {row['first_full_s']} s", flush=True)

    if cloud is not None:
        shardq(cloud)
    if "optuna" in args.systems:
        if optuna_available():
            runs.append(run_optuna(s))
            print(f"{runs[-1]['system']}: first full {runs[-1]['first_full_s']} s", flush=True)
        else:
            skipped["optuna"] = "optuna is not installed (make bench-async installs it)"
    if "raytune" in args.systems:
        why = raytune_available()
        if why is None:
            runs.append(run_raytune(s, args.timeout))
            print(f"{runs[-1]['system']}: first full {runs[-1]['first_full_s']} s", flush=True)
        else:
            skipped["raytune"] = why
    for row in runs:
        if row["trials_at_budget"].get(s["budgets"][0]) != len(s["points"]):
            problems.append(
                f"{row['system']}: {row['trials_at_budget']} — not every trial trained its first rung"
            )
    for name, why in skipped.items():
        print(f"{name} skipped: {why}", flush=True)
    return {
        "spec": {k: v for k, v in s.items() if k != "request"},
        "runs": runs,
        "skipped": skipped,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; print the table; exit 1 when a run failed its correctness checks."""
    from benchmarks import async_report

    args = parse(argv)
    sys.path.insert(0, str(ROOT))
    m = machine()
    print(describe(m))
    load_before = load()
    out = run_all(args)
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": m,
        "load_before": load_before,
        **out,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(async_report.sweep_table(result))
    for p in out["problems"]:
        print(f"CHECK FAILED: {p}", file=sys.stderr)
    if args.write:
        async_report.write_sweep(result)
    return 1 if out["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
