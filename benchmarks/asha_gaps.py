"""Where a worker's time between two tasks goes in ``benchmarks/async_sweep.py``'s ASHA run (issue 27,
item 4: the idle target): every AWS call each worker thread makes is timed (botocore's
``_make_api_call``), and each gap between the end of one task's busy interval (the workload's
sleep and training) and the start of its next is split into the calls inside it, by operation, and
the rest (the worker's own Python: parsing, the verdict, temporary directories, the entrypoint's
import check).

    .venv/bin/python -m benchmarks.asha_gaps [--trials 27] [--unit-s 0.5] [--promotion eager]

It prints, per operation, how many calls fell in the gaps and their median and total seconds,
then the gaps' median and the share of the gap time each part took. ``ReceiveMessage`` includes any
wait for a task not yet on the queue (the aggregator's decision): a long one is the coordination's
round trip, a short one the call's own cost.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import botocore.client

from benchmarks import async_sweep
from benchmarks import async_workload as wl
from shardq.local.cloud import LocalCloud

Call = tuple[str, str, float, float]  # (thread, operation, start, end)
# A gap longer than this is listed on its own (a wait for a decision, not the worker's own calls).
LONG_GAP_S = 0.25


@contextmanager
def timed_calls() -> Iterator[list[Call]]:
    """Every botocore API call made meanwhile, with its thread and wall-clock start and end."""
    calls: list[Call] = []
    lock = threading.Lock()
    original = botocore.client.BaseClient._make_api_call

    def timed(self: Any, operation_name: str, api_params: Any) -> Any:
        start = time.time()
        try:
            return original(self, operation_name, api_params)
        finally:
            row = (threading.current_thread().name, operation_name, start, time.time())
            with lock:
                calls.append(row)

    botocore.client.BaseClient._make_api_call = timed  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        botocore.client.BaseClient._make_api_call = original  # type: ignore[method-assign]


def idle_parts(intervals: list[dict[str, Any]], workers: int, t0: float) -> dict[str, float]:
    """Idle worker-seconds while work remained (``t0`` to the last task's start), in three parts:
    before each worker's first task, between its tasks, and after its last one."""
    last_start = max(r["start"] for r in intervals)
    parts = {"before_first_s": 0.0, "between_s": 0.0, "after_last_s": 0.0}
    for w in range(workers):
        rows = sorted((r for r in intervals if r["worker"] == w), key=lambda r: r["start"])
        if not rows:
            parts["after_last_s"] += last_start - t0
            continue
        parts["before_first_s"] += rows[0]["start"] - t0
        for a, b in itertools.pairwise(rows):
            parts["between_s"] += max(0.0, min(b["start"], last_start) - min(a["end"], last_start))
        parts["after_last_s"] += max(0.0, last_start - rows[-1]["end"])
    span = workers * (last_start - t0)
    return {**{k: round(v, 3) for k, v in parts.items()}, "worker_s": round(span, 3)}


def split_gaps(intervals: list[dict[str, Any]], calls: list[Call]) -> dict[str, Any]:
    """Each worker's gaps between consecutive busy intervals, split into its AWS calls and the rest."""
    per_op: dict[str, list[float]] = defaultdict(list)
    gaps: list[float] = []
    rest: list[float] = []
    long: list[dict[str, Any]] = []
    t0 = min((r["start"] for r in intervals), default=0.0)
    by_worker: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in intervals:
        by_worker[r["worker"]].append(r)
    for worker, rows in by_worker.items():
        rows.sort(key=lambda r: r["start"])
        name = f"bench-worker-{worker}"
        mine = [c for c in calls if c[0] == name]
        for a, b in itertools.pairwise(rows):
            lo, hi = a["end"], b["start"]
            inside = [c for c in mine if c[2] >= lo and c[3] <= hi]
            spent = 0.0
            for _, op, s, e in inside:
                per_op[op].append(e - s)
                spent += e - s
            gaps.append(hi - lo)
            if hi - lo > LONG_GAP_S:
                long.append({"worker": worker, "at": round(lo - t0, 2), "gap_s": round(hi - lo, 3),
                             "next": (b["rung"], b["trial"])})  # fmt: skip
            rest.append(max(0.0, hi - lo - spent))
    total = sum(gaps) or 1.0
    return {
        "gaps": len(gaps),
        "gap_median_s": round(statistics.median(gaps), 4) if gaps else None,
        "gap_total_s": round(sum(gaps), 3),
        "ops": {
            op: {
                "calls": len(v),
                "median_s": round(statistics.median(v), 4),
                "total_s": round(sum(v), 3),
                "share": round(sum(v) / total, 3),
            }
            for op, v in sorted(per_op.items(), key=lambda kv: -sum(kv[1]))
        },
        "long": long,
        "rest": {
            "median_s": round(statistics.median(rest), 4) if rest else None,
            "total_s": round(sum(rest), 3),
            "share": round(sum(rest) / total, 3),
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=27)
    parser.add_argument("--unit-s", type=float, default=0.5)
    parser.add_argument("--promotion", default="paper", choices=["paper", "eager"])
    parser.add_argument("--parallel", type=int, default=0, help="max_parallel (0: one per worker)")
    parser.add_argument("--tail", type=int, default=0, help="also print the last N busy intervals")
    args = parser.parse_args(argv)
    spec = async_sweep.spec(async_sweep.parse(["--trials", str(args.trials), "--unit-s", str(args.unit_s)]))
    with LocalCloud() as cloud, timed_calls() as calls:
        row = async_sweep.run_shardq(cloud, spec, "asha", 600.0, args.parallel or None, args.promotion)
    out = split_gaps(list(wl.BUSY.intervals), calls)
    idle = idle_parts(list(wl.BUSY.intervals), spec["workers"], row["t0"])
    print(
        f"{row['system']}: {row['status']}, first full {row['first_full_ratio']}×, idle while work "
        f"remained {100 * (row['idle_while_work'] or 0):.1f} %"
    )
    print(f"idle worker-seconds while work remained: {idle}")
    print(f"{out['gaps']} gaps, median {out['gap_median_s']} s, {out['gap_total_s']} s in all")
    for op, f in out["ops"].items():
        print(
            f"  {op:<22} {f['calls']:>4} calls, median {f['median_s']:.4f} s, "
            f"{f['total_s']:.3f} s ({100 * f['share']:.0f} %)"
        )
    for g in out["long"]:
        print(f"  long gap: worker {g['worker']} at {g['at']} s for {g['gap_s']} s, then {g['next']}")
    if args.tail:
        t0 = row["t0"]
        for r in sorted(wl.BUSY.intervals, key=lambda r: r["start"])[-args.tail :]:
            print(f"  worker {r['worker']}: rung {r['rung']} trial {r['trial']} "
                  f"{r['start'] - t0:.2f}-{r['end'] - t0:.2f} s")  # fmt: skip
    rest = out["rest"]
    print(
        f"  {'(the rest)':<22} median {rest['median_s']} s, {rest['total_s']} s ({100 * rest['share']:.0f} %)"
    )


if __name__ == "__main__":
    main()
