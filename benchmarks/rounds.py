"""Rounds and sweeps as peers run them (issue 13): a straggler against quorum, successive halving
against the full budget, and against Optuna's ``SuccessiveHalvingPruner``.

All on the local cloud (ministack on 127.0.0.1), with the in-process engine over real queues, a
real job table and bucket (``benchmarks.rounds_local``), and worker threads that are real
``shardq.worker.runtime.Worker`` objects: no Lambda deploy, so a run takes about a minute.

1. **Straggler vs quorum.** One ``data_parallel`` round of ``--shards`` shards, one worker per
   shard; every shard sleeps ``--delay`` s before it trains, shard ``--straggler`` ``--slow-factor``
   times longer. The same request (same seeds) runs with no quorum, with ``quorum.fraction``
   ``--quorum`` and with ``quorum.deadline_seconds`` ``--deadline``; then the fraction again with
   the slow shard on shard 0 (until 4b20432 the reduce's FIFO message group). Figures: when each
   round's training closed, when the job ended (reduce included), when the slow shard's tasks
   started, seconds after submission. ``--rounds 2``: two rounds, a later round's tasks too.
2. **Successive halving vs the full budget.** ``examples/requests/sweep_halving.json`` (random
   search, ``--trials`` trials, eta 3, budgets 1 → 3 → 9 epochs of ``examples.linear.train``) run
   as it is and without ``early_stopping`` (every trial trains 9 epochs). Figures: trial-epochs
   (the manifest's ``early_stopping.budget_spent``; K × 9 for the full run) and the best trial.
3. **Against Optuna.** The same search space, objective, trials and budget schedule with Optuna's
   ``SuccessiveHalvingPruner``, trained in this process by the same function (``benchmarks.rounds_peer``);
   once with shardq's points enqueued, once with Optuna's ``RandomSampler`` at the same seed.
   Skipped with a message when Optuna is not installed (``make bench-rounds`` installs it).

Exits 1 when a correctness check fails (a job not SUCCEEDED, a straggler counted after the
round closed, a budget that does not add up).

    .venv/bin/python -m benchmarks.rounds [--shards 8] [--delay 1.0] [--slow-factor 10] [--trials 27]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from benchmarks import rounds_peer
from benchmarks._common import ROOT, describe, emit_json, machine, table
from benchmarks.rounds_local import LocalRun, Timeline
from shardq.core import search
from shardq.core.contracts import EarlyStopping, TrainingRequest
from shardq.local.cloud import LocalCloud

SWEEP_REQUEST = ROOT / "examples" / "requests" / "sweep_halving.json"


def straggler_payload(
    name: str, args: argparse.Namespace, straggler: int, quorum: dict[str, Any] | None
) -> dict[str, Any]:
    """One data_parallel round; shard ``straggler`` is ``args.slow_factor``× slower than the others."""
    payload: dict[str, Any] = {
        "job_id": f"straggler-{name}",
        "kind": "data_parallel",
        "dataset": {"uri": "synthetic://linear?dim=8&noise=0.05&seed=7", "num_samples": 512 * args.shards},
        "sharding": {"shard_count": args.shards},
        "rounds": args.rounds,
        "hyperparameters": {
            "lr": 0.05, "epochs": 2, "batch_size": 64,
            "delay_s": args.delay, "straggler": straggler, "slow_factor": args.slow_factor,
        },
        "max_parallel": args.shards,
        "entrypoint": "benchmarks.rounds_workload:straggling_train",
    }  # fmt: skip
    if quorum is not None:
        payload["quorum"] = quorum
    return payload


def straggler_variants(args: argparse.Namespace) -> list[tuple[str, int, dict[str, Any] | None]]:
    """(label, straggler shard, quorum) of each run: no quorum, a fraction, a deadline; then the
    fraction again with the straggler on shard 0, whose FIFO message group the round's reduce task
    shared until 4b20432 (the reduce then waited for the straggler)."""
    fraction = {"fraction": args.quorum}
    return [
        ("off", args.straggler, None),
        (f"fraction {args.quorum}", args.straggler, fraction),
        (f"deadline {args.deadline} s", args.straggler, {"deadline_seconds": args.deadline}),
        (f"fraction {args.quorum}, straggler = shard 0", 0, fraction),
    ]


def straggler_rows(cloud: LocalCloud, args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    """Run each straggler variant on fresh resources; one row each, and the problems found."""
    rows, problems = [], []
    for n, (label, straggler, quorum) in enumerate(straggler_variants(args)):
        payload = straggler_payload(str(n), args, straggler, quorum)
        with LocalRun(cloud, workers=args.shards) as run:
            line = run.run(payload, timeout=args.timeout, train_results=args.shards * args.rounds)
        row = straggler_row(label, line, straggler)
        rows.append(row)
        problems += straggler_problems(row, line, quorum is not None)
    return rows, problems


def straggler_row(label: str, line: Timeline, straggler: int) -> dict[str, Any]:
    """The figures of one straggler run."""
    train = [r for r in line.results if r["task_type"] == "train"]
    slow = sorted((r for r in train if r["shard_id"] == straggler), key=lambda r: r["round"])
    fast = [r["duration_s"] for r in train if r["shard_id"] != straggler]
    rounds = line.manifest.get("rounds") or [{}]
    return {
        "quorum": label,
        "straggler": straggler,
        "status": line.status,
        "round_closed_s": line.round_closed_s.get(0),
        "rounds_closed_s": [line.round_closed_s.get(r) for r in sorted(line.round_closed_s)],
        "job_done_s": line.finished_s,
        "fast_shard_s_max": round(max(fast), 3) if fast else None,
        "straggler_s": round(slow[0]["duration_s"], 3) if slow else None,
        # When each of the slow shard's tasks started (its result's arrival less its duration:
        # late by the result's trip through the queue, a few hundredths of a second here).
        "slow_started_s": [round(r["ingested_s"] - r["duration_s"], 2) for r in slow],
        "counted": [r.get("shards_succeeded") for r in rounds],
        "late": line.late,
        "val_loss": (rounds[0].get("metrics", {}).get("val_loss") or {}).get("mean"),
        "results": line.results,
    }


def straggler_problems(row: dict[str, Any], line: Timeline, with_quorum: bool) -> list[str]:
    """Correctness: the job succeeded; a straggler is counted without quorum, late with it."""
    problems = []
    if line.status != "SUCCEEDED":
        problems.append(f"straggler run '{row['quorum']}' ended {line.status}: {line.error}")
    if with_quorum and row["late"] < 1:
        problems.append(f"straggler run '{row['quorum']}': the straggler's result was not recorded late")
    if not with_quorum and row["late"]:
        problems.append("straggler run without quorum recorded a late result")
    return problems


def sweep_payloads(trials: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The halving sweep of the example request with ``trials`` trials, and the same sweep at full budget."""
    halving = json.loads(SWEEP_REQUEST.read_text())
    halving["search"]["num_trials"] = trials
    full = {k: v for k, v in halving.items() if k != "early_stopping"}
    full["hyperparameters"] = {
        **halving["hyperparameters"],
        "epochs": halving["early_stopping"]["max_budget"],
    }
    halving["job_id"], full["job_id"] = "sweep-halving", "sweep-full"
    return halving, full


def sweep_rows(cloud: LocalCloud, args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """Run the sweep at full budget and with successive halving; the figures and any problems."""
    halving, full = sweep_payloads(args.trials)
    request = TrainingRequest.from_dict(halving)
    es = request.early_stopping
    assert es is not None
    out: dict[str, Any] = {"budgets": es.budgets, "eta": es.eta, "trials": request.task_count}
    problems: list[str] = []
    for name, payload in (("full", full), ("halving", halving)):
        out[name], found = sweep_run(cloud, args, payload, es)
        problems += found
    out["points"] = [search.trial_params(request, i) for i in range(request.task_count)]
    return out, problems


def sweep_run(
    cloud: LocalCloud, args: argparse.Namespace, payload: dict[str, Any], es: EarlyStopping
) -> tuple[dict[str, Any], list[str]]:
    """One sweep through the engine: trial-epochs, the best trial, each trial's rung values."""
    started = time.monotonic()
    with LocalRun(cloud, workers=args.sweep_workers) as run:
        line = run.run(payload, timeout=args.timeout)
    manifest, problems = line.manifest, []
    if line.status != "SUCCEEDED":
        problems.append(f"sweep {line.job_id} ended {line.status}: {line.error}")
    tasks = [r for r in line.results if r["task_type"] == "train"]
    if "early_stopping" in payload:
        spent = manifest.get("early_stopping", {}).get("budget_spent")
        # Each rung trains its increment over the rung before; recount it from the results.
        counted = sum(
            es.budgets[r["round"]] - (es.budgets[r["round"] - 1] if r["round"] else 0) for r in tasks
        )
        if spent != counted:
            problems.append(f"{line.job_id}: manifest budget_spent {spent} != {counted} from the results")
        reached = {row["trial"]: es.budgets[row["rung"]] for row in manifest.get("leaderboard", [])}
    else:
        spent = len(tasks) * es.max_budget
        reached = {row["trial"]: es.max_budget for row in manifest.get("leaderboard", [])}
    best = manifest.get("best") or {}
    return {
        "trial_epochs": spent,
        "tasks": len(tasks),
        "trials_at_budget": {b: sum(1 for v in reached.values() if v >= b) for b in es.budgets},
        "best_trial": best.get("trial"),
        "best_objective": best.get("objective"),
        "best_params": best.get("hyperparameters"),
        "seconds": round(time.monotonic() - started, 2),
        "leaderboard": [
            {"trial": r["trial"], "rung": r.get("rung"), "objective": r["objective"],
             "rungs": [h["objective"] for h in r.get("rungs", [])]}
            for r in manifest.get("leaderboard", [])
        ],
    }, problems  # fmt: skip


def peer_rows(sweeps: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Optuna's successive halving on the same space, budgets and trials (none without Optuna)."""
    if not rounds_peer.available():
        print("optuna is not installed: the peer comparison is skipped (make bench-rounds installs it)")
        return []
    halving, _ = sweep_payloads(args.trials)
    base = {
        "uri": halving["dataset"]["uri"],
        "num_samples": halving["dataset"]["num_samples"],
        "hyperparameters": halving["hyperparameters"],
    }
    common = {
        "base": base,
        "space": halving["search_space"],
        "budgets": sweeps["budgets"],
        "eta": sweeps["eta"],
        "num_trials": sweeps["trials"],
        "seed": halving["search"]["seed"],
    }
    return [
        rounds_peer.optuna_halving(**common, points=sweeps["points"]),
        rounds_peer.optuna_halving(**common),
    ]


def sweep_line(name: str, run: dict[str, Any], full_epochs: int) -> list[Any]:
    """One row of the sweep table."""
    fewer = f"{full_epochs / run['trial_epochs']:.2f}×"
    objective = run["best_objective"]
    shown = f"{objective:.6f}" if isinstance(objective, float) else objective
    reached = "/".join(str(n) for n in run["trials_at_budget"].values())
    return [name, run["trial_epochs"], fewer, reached, run["best_trial"], shown]


def report(rows: list[dict[str, Any]], sweeps: dict[str, Any], peers: list[dict[str, Any]]) -> None:
    """Print the straggler table and the sweep table."""
    print("\nStraggler vs quorum (seconds after submission; lists: one entry per round)")

    def joined(values: list[Any]) -> str:
        return " / ".join(str(v) for v in values)

    headers = ["quorum", "slow shard", "status", "round closed", "job done", "slowest other"]
    headers += ["slow shard's", "slow shard started", "counted", "late"]
    print(table(headers, [
        [r["quorum"], r["straggler"], r["status"], joined(r["rounds_closed_s"]), r["job_done_s"],
         r["fast_shard_s_max"], r["straggler_s"], joined(r["slow_started_s"]), joined(r["counted"]),
         r["late"]]
        for r in rows
    ]))  # fmt: skip
    full_epochs = sweeps["full"]["trial_epochs"]
    lines = [
        sweep_line("shardq, full budget", sweeps["full"], full_epochs),
        sweep_line("shardq, successive halving", sweeps["halving"], full_epochs),
    ]
    lines += [sweep_line(f"Optuna {p['optuna']} SHA pruner, {p['sampler']}", p, full_epochs) for p in peers]
    budgets = "/".join(map(str, sweeps["budgets"]))
    print(f"\nSweeps: {sweeps['trials']} trials, eta {sweeps['eta']}, budgets {budgets} epochs (val_loss)")
    headers = [
        "run",
        "trial-epochs",
        "fewer than full",
        f"trials reaching {budgets}",
        "best trial",
        "best val_loss",
    ]
    print(table(headers, lines))


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument(
        "--delay", type=float, default=1.0, help="seconds every shard sleeps before it trains"
    )
    parser.add_argument("--slow-factor", type=float, default=10.0)
    parser.add_argument("--straggler", type=int, default=None, help="the slow shard (default: the last)")
    parser.add_argument("--quorum", type=float, default=0.75)
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the straggler job")
    parser.add_argument("--deadline", type=int, default=3, help="quorum.deadline_seconds of the third run")
    parser.add_argument("--trials", type=int, default=27)
    parser.add_argument("--sweep-workers", type=int, default=4)
    parser.add_argument("--skip-optuna", action="store_true")
    parser.add_argument("--skip-straggler", action="store_true", help="only the sweeps and the peer")
    parser.add_argument("--timeout", type=float, default=300.0, help="per job, seconds")
    args = parser.parse_args(argv)
    if args.straggler is None:
        args.straggler = args.shards - 1
    return args


def run_all(cloud: LocalCloud, args: argparse.Namespace) -> dict[str, Any]:
    """The three comparisons on ``cloud``: straggler rows, sweeps, peers and the problems found."""
    rows, problems = straggler_rows(cloud, args) if not args.skip_straggler else ([], [])
    sweeps, sweep_problems = sweep_rows(cloud, args)
    peers = [] if args.skip_optuna else peer_rows(sweeps, args)
    return {"straggler": rows, "sweeps": sweeps, "peers": peers, "problems": problems + sweep_problems}


def main(argv: list[str] | None = None) -> int:
    """Run the three comparisons; exit 1 when a correctness check failed."""
    args = parse(argv)
    sys.path.insert(0, str(ROOT))
    m = machine()
    print(describe(m))
    with LocalCloud() as cloud:
        out = run_all(cloud, args)
    report(out["straggler"], out["sweeps"], out["peers"])
    for p in out["problems"]:
        print(f"CHECK FAILED: {p}", file=sys.stderr)
    emit_json("rounds", {"args": vars(args), **out, "machine": m})
    return 1 if out["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
