"""Worker idle cost: ReceiveMessage calls per idle worker-minute, on the local cloud.

Real ``shardq.worker.runtime.Worker`` objects, each in a thread, poll an empty task
queue (freshly provisioned on a ``LocalCloud``) with their default 20-second long poll;
their SQS clients are wrapped in ``tests.helpers.CountingClient`` (calls per operation)
over a wrapper that notes when each call started and returned. After ``--seconds`` the
workers are stopped; a poll in progress then finishes on its own (up to 20 s later).

Calls per worker-minute = every ReceiveMessage call the worker made × 60 / the span from
the first call's start to the last call's return (so a poll cut by the window's edge is
neither lost nor half-counted). A long poll that SQS holds for the full 20 s gives 3 per
minute; the measured poll durations show whether the emulator really holds the poll.
The calls started inside the window are reported too.

Baseline in the same run, for the ratio: the same Worker with ``wait_s=0`` (short polling,
as a worker without long polling would do), run for ``--baseline-seconds`` beside the
long-polling workers.

    .venv/bin/python -m benchmarks.idle [--seconds 60] [--workers 2] [--baseline-seconds 10]
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

from benchmarks._common import describe, emit_json, machine, median, table
from shardq.local.cloud import LocalCloud
from shardq.local.resources import provision
from shardq.worker.runtime import Worker
from shardq.worker.trust import AllowList
from tests.helpers import CountingClient

TARGET_PER_MINUTE = 3.0


class Timed:
    """Notes (operation, started, returned) for every call on a client."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.exceptions = real.exceptions
        self.calls: list[tuple[str, float, float]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            t0 = time.monotonic()
            try:
                return attr(*args, **kwargs)
            finally:
                self.calls.append((name, t0, time.monotonic()))

        return call


def measure(cloud: LocalCloud, seconds: float, workers: int, wait_s: int) -> list[dict[str, Any]]:
    """Run ``workers`` idle workers for ``seconds``; per worker: calls, rate, poll durations."""
    sqs, ddb, s3 = cloud.client("sqs"), cloud.client("dynamodb"), cloud.client("s3")
    settings = provision(sqs, ddb, s3)
    stop = threading.Event()
    runs = []
    for i in range(workers):
        timed = Timed(cloud.client("sqs"))
        counting = CountingClient(timed)
        worker = Worker(
            allow=AllowList.parse("benchmarks.*"),
            sqs=counting,
            s3=s3,
            task_queue_url=settings.task_queue_url,
            results_queue_url=settings.results_queue_url,
            ddb=ddb,
            job_table=settings.job_table,
            wait_s=wait_s,
            max_receive_count=5,  # skip the start-up GetQueueAttributes: only polling is measured
            worker_id=f"idle-{wait_s}-{i}",
        )
        runs.append((worker, counting, timed, threading.Thread(target=worker.run, args=(stop,), daemon=True)))
    started = time.monotonic()
    for *_, thread in runs:
        thread.start()
    time.sleep(seconds)
    stop.set()
    window_end = started + seconds
    for *_, thread in runs:
        thread.join(timeout=wait_s + 10)
    out = []
    for worker, counting, timed, _ in runs:
        receives = [(t0, t1) for op, t0, t1 in timed.calls if op == "receive_message"]
        in_window = [(t0, t1) for t0, t1 in receives if t0 < window_end]
        durations = [t1 - t0 for t0, t1 in receives]
        span = max(t1 for _, t1 in receives) - min(t0 for t0, _ in receives) if receives else 0.0
        out.append(
            {
                "worker_id": worker.worker_id,
                "wait_s": wait_s,
                "window_s": seconds,
                "receive_calls_in_window": len(in_window),
                "receive_calls": len(receives),
                "span_s": round(span, 3),
                "receive_calls_per_minute": round(len(receives) * 60 / span, 2) if span else None,
                "median_poll_s": round(median(durations), 3) if durations else None,
                "other_calls": {k: v for k, v in counting.counts.items() if k != "receive_message"},
                "tasks_done": worker.tasks_done,
            }
        )
    return out


def run(seconds: float, workers: int, baseline_seconds: float) -> dict[str, Any]:
    with LocalCloud() as cloud:
        results: dict[str, list[dict[str, Any]]] = {}
        threads = []

        def long_poll() -> None:
            results["long_poll_20s"] = measure(cloud, seconds, workers, 20)

        def short_poll() -> None:
            time.sleep(1.0)  # let the long polls start first
            results["short_poll_0s"] = measure(cloud, baseline_seconds, 1, 0)

        threads = [threading.Thread(target=long_poll)]
        if baseline_seconds > 0:
            threads.append(threading.Thread(target=short_poll))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    long_rate = median([w["receive_calls_per_minute"] for w in results["long_poll_20s"]])
    summary: dict[str, Any] = {
        "long_poll_calls_per_worker_minute": long_rate,
        "target_per_minute": TARGET_PER_MINUTE,
        "within_target": long_rate <= TARGET_PER_MINUTE,
    }
    if "short_poll_0s" in results:
        short_rate = results["short_poll_0s"][0]["receive_calls_per_minute"]
        summary["short_poll_calls_per_worker_minute"] = short_rate
        summary["short_over_long_ratio"] = round(short_rate / long_rate, 1) if long_rate else None
    lost = sum(w["tasks_done"] for ws in results.values() for w in ws)
    if lost:
        raise RuntimeError(f"idle workers handled {lost} tasks on an empty queue")
    return {
        "seconds": seconds,
        "workers": workers,
        "baseline_seconds": baseline_seconds,
        **summary,
        **results,
    }


def report(result: dict[str, Any]) -> None:
    rows = []
    for name in ("long_poll_20s", "short_poll_0s"):
        for w in result.get(name, []):
            rows.append(
                [
                    w["worker_id"],
                    f"{w['wait_s']}",
                    f"{w['window_s']:.0f}",
                    w["receive_calls_in_window"],
                    w["receive_calls"],
                    f"{w['span_s']:.1f}",
                    f"{w['receive_calls_per_minute']:.1f}",
                    f"{w['median_poll_s']:.3f}" if w["median_poll_s"] is not None else "",
                    sum(w["other_calls"].values()),
                ]
            )
    print(f"Idle workers on an empty queue (local cloud), window {result['seconds']:.0f} s")
    print(
        table(
            [
                "worker",
                "WaitTimeSeconds",
                "window s",
                "calls started in window",
                "calls in all",
                "span s",
                "calls / worker-minute",
                "median poll s",
                "other SQS calls",
            ],
            rows,
        )
    )
    ok = "within" if result["within_target"] else "OVER"
    line = (
        f"long poll: {result['long_poll_calls_per_worker_minute']:.1f} ReceiveMessage calls per idle "
        f"worker-minute ({ok} ≤ {TARGET_PER_MINUTE:.0f})"
    )
    if result.get("short_over_long_ratio"):
        line += f"; short polling makes {result['short_over_long_ratio']:.0f}× as many"
    print(line)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="idle window (default 60)")
    parser.add_argument("--workers", type=int, default=2, help="long-polling workers (default 2)")
    parser.add_argument(
        "--baseline-seconds", type=float, default=10.0, help="short-poll baseline window (0: skip)"
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.workers < 1:
        parser.error("--seconds must be positive and --workers at least 1")
    result = {**run(args.seconds, args.workers, args.baseline_seconds), "machine": machine()}
    print(describe(result["machine"]))
    report(result)
    emit_json("idle", result)
    return result


if __name__ == "__main__":
    main()
