"""What ASHA's rules allow on ``benchmarks/async_sweep.py``'s workers: the paper's promotion rule
and the eager one (``early_stopping.promotion``, ``shardq.core.asha_rules``), each shardq's own
``next_promotion``, simulated with no coordination cost, or a fixed one, on the same speeds,
budgets and measured val_loss values (issue 27, item 4; BENCHMARKS.md §19).

Each worker runs a rung for ``unit_s × epochs the rung adds × its speed factor`` (the benchmark's
sleep; the real training on top is left out) and, ``--round-trip`` seconds after it finishes, starts
the task the rule gives its slot: a due promotion (highest rung first), else the next trial at
rung 0. With round trip 0 this is the floor any implementation of the rule reaches on these
workers; the figures are the benchmark's (``benchmarks.async_sweep.figures``).

    .venv/bin/python -m benchmarks.asha_bound [--json benchmarks/results/async_sweep.json]
        [--round-trip 0 0.05 0.2] [--promotion paper eager]

The val_loss of trial ``t`` at rung ``k`` is the one any system of the run measured (every system
trains trial ``t`` bit for bit alike; the eager rule takes trials further than the paper's run did).
"""

from __future__ import annotations

import argparse
import heapq
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from benchmarks.async_sweep import RESULTS, base_request, figures
from shardq.core import async_sweep
from shardq.core.contracts import ShardResult, TrainingRequest


def simulate(
    spec: dict[str, Any], values: dict[int, list[float]], round_trip: float, promotion: str = "paper"
) -> list[dict[str, Any]]:
    """Busy intervals of ASHA with ``promotion``'s rule on ``spec``'s workers, each next task
    ``round_trip`` late."""
    req = base_request(SimpleNamespace(trials=len(spec["points"]), unit_s=spec["unit_s"]), spec["speeds"])
    req["early_stopping"] = {**req["early_stopping"], "method": "asha", "promotion": promotion}
    request = TrainingRequest.from_dict(req)
    budgets, speeds, unit = spec["budgets"], spec["speeds"], spec["unit_s"]
    metric = request.objective.metric if request.objective else "val_loss"
    results: list[ShardResult] = []
    decided: set[tuple[int, int]] = set()
    drawn = 0
    intervals: list[dict[str, Any]] = []
    running: list[tuple[float, int, int, int]] = []  # (end, worker, rung, trial)

    def start(worker: int, at: float) -> None:
        nonlocal drawn
        promo = async_sweep.next_promotion(request, async_sweep.by_rung(results), decided)
        if promo is None and not running and drawn >= request.task_count:
            promo = async_sweep.next_promotion(request, async_sweep.by_rung(results), decided, drain=True)
        if promo is not None:
            rung, trial = promo.rung, promo.trial
        elif drawn < request.task_count:
            rung, trial, drawn = 0, drawn, drawn + 1
        else:
            return
        decided.add((rung, trial))
        epochs = budgets[rung] - (budgets[rung - 1] if rung else 0)
        end = at + unit * epochs * speeds[worker]
        intervals.append(
            {"worker": worker, "start": at, "end": end, "trial": trial, "rung": rung, "epochs": epochs}
        )
        heapq.heappush(running, (end, worker, rung, trial))

    idle = list(range(len(speeds)))
    for worker in idle:
        start(worker, 0.0)
    idle = []
    while running:
        end, worker, rung, trial = heapq.heappop(running)
        value = values[trial][rung]
        results.append(
            ShardResult(
                job_id="bound", round=rung, shard_id=trial, task_type="train", status="succeeded",
                metrics={metric: value},
            )
        )  # fmt: skip
        idle.append(worker)
        for w in list(idle):  # a freed slot, and any idle one a new result may give work
            before = len(intervals)
            start(w, end + round_trip)
            if len(intervals) > before:
                idle.remove(w)
    return intervals


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, default=RESULTS, help="a benchmarks.async_sweep result")
    parser.add_argument("--round-trip", type=float, nargs="+", default=[0.0, 0.05, 0.2, 1.3])
    parser.add_argument("--promotion", nargs="+", default=["paper", "eager"], choices=["paper", "eager"])
    args = parser.parse_args(argv)
    data = json.loads(args.json.read_text())
    spec = data["spec"]
    values = measured_values(data["runs"], len(spec["budgets"]))
    print(f"one configuration trained fully on the median worker: {spec['one_full_s']:.2f} s")
    for promotion in args.promotion:
        for rt in args.round_trip:
            f = figures(spec, simulate(spec, values, rt, promotion), 0.0)
            print(
                f"{promotion}, round trip {rt:.2f} s: first full config {f['first_full_s']} s "
                f"({f['first_full_ratio']}×), idle while work remained {100 * f['idle_while_work']:.1f} %, "
                f"makespan {f['makespan_s']} s, trial-epochs {f['trial_epochs']}, "
                f"trials reaching budgets {f['trials_at_budget']}"
            )


def measured_values(runs: list[dict[str, Any]], rungs: int) -> dict[int, list[float]]:
    """Each trial's val_loss per rung, as far as any run of the benchmark took it (every system
    trains trial ``t`` alike). A rung no run reached is ``inf``: the worst, never promoted (the
    rules ranked it below the rest wherever it ran)."""
    values: dict[int, list[float]] = {}
    for run in runs:
        for t, v in run.get("values", {}).items():
            if len(v) > len(values.get(int(t), [])):
                values[int(t)] = list(v)
    for v in values.values():
        v.extend([float("inf")] * (rungs - len(v)))
    return values


if __name__ == "__main__":
    main()
