"""A no-op worker for ``benchmarks.scale``: receive tasks ten at a time, answer each at once.

It speaks the worker protocol of ``shardq.worker`` at its cheapest, so the coordination plane
(splitter, queues, aggregator, job table) is what the benchmark measures, not the workers:
``ReceiveMessage`` of up to 10 tasks, one ``ShardResult`` per task (succeeded, one sample, a
metric, ``artifact_uri`` = the task's output prefix, nothing uploaded), one
``SendMessageBatch`` of the results, one ``DeleteMessageBatch`` of the tasks. Bounded: it
stops at ``--deadline`` (seconds since the epoch) or when ``--stop-file`` exists, and writes
its counts to ``--stats`` (JSON) when it stops.

    python -m benchmarks.scale_worker --tasks URL --results URL --stats FILE --stop-file FILE \
        --deadline EPOCH [--worker-id ID]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from shardq.core.clients import client
from shardq.core.contracts import ShardResult, ShardTask

# A short long poll: the worker notices the stop file within this many seconds.
WAIT_S = 2


def answer(body: str, worker_id: str) -> ShardResult:
    """The no-op result of one task body."""
    task = ShardTask.from_json(body)
    return ShardResult.for_task(
        task,
        "succeeded",
        metrics={"score": 1.0},
        num_samples=1,
        artifact_uri=task.output_prefix,
        duration_s=0.0,
        worker_id=worker_id,
    )


def send_all(sqs: Any, url: str, entries: list[dict[str, str]]) -> int:
    """``SendMessageBatch`` until every entry is accepted (bounded); returns the calls made."""
    calls = 0
    while entries and calls < 10:
        resp = sqs.send_message_batch(QueueUrl=url, Entries=entries)
        calls += 1
        failed = {f["Id"] for f in resp.get("Failed", [])}
        entries = [e for e in entries if e["Id"] in failed]
    if entries:
        raise RuntimeError(f"results queue refused {len(entries)} results 10 times")
    return calls


def work(args: argparse.Namespace) -> dict[str, Any]:
    """Poll, answer and delete until the deadline or the stop file; returns the counts."""
    sqs = client("sqs")
    stats: dict[str, Any] = {"worker_id": args.worker_id, "tasks": 0, "receives": 0, "empty_receives": 0}
    stats.update(sends=0, deletes=0, first_result_at=None, last_result_at=None, max_task_bytes=0)
    stats["max_result_bytes"] = 0
    stop = Path(args.stop_file)
    while time.time() < args.deadline and not stop.exists():
        resp = sqs.receive_message(QueueUrl=args.tasks, MaxNumberOfMessages=10, WaitTimeSeconds=WAIT_S)
        stats["receives"] += 1
        messages = resp.get("Messages", [])
        if not messages:
            stats["empty_receives"] += 1
            continue
        entries = [
            {"Id": str(i), "MessageBody": answer(m["Body"], args.worker_id).to_json()}
            for i, m in enumerate(messages)
        ]
        stats["max_task_bytes"] = max(stats["max_task_bytes"], *(len(m["Body"].encode()) for m in messages))
        stats["max_result_bytes"] = max(stats["max_result_bytes"], *(len(e["MessageBody"]) for e in entries))
        stats["sends"] += send_all(sqs, args.results, entries)
        now = time.time()
        stats["first_result_at"] = stats["first_result_at"] or now
        stats["last_result_at"] = now
        stats["tasks"] += len(messages)
        sqs.delete_message_batch(
            QueueUrl=args.tasks,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )
        stats["deletes"] += 1
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", required=True, help="task queue URL")
    parser.add_argument("--results", required=True, help="results queue URL")
    parser.add_argument("--stats", required=True, help="where to write the counts (JSON)")
    parser.add_argument("--stop-file", required=True, help="stop when this file exists")
    parser.add_argument("--deadline", type=float, required=True, help="stop at this time (epoch s)")
    parser.add_argument("--worker-id", default=f"scale-{os.getpid()}")
    args = parser.parse_args(argv)
    stats = work(args)
    Path(args.stats).write_text(json.dumps(stats))


if __name__ == "__main__":
    main()
