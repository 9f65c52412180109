"""Chaos training functions: the deterministic linear trainer, slowed down, logged, optionally poisoned.

``train`` wraps ``examples.linear.train`` so its models are bit-for-bit those of a fault-free
run (the extra hyperparameters are ignored by the trainer). Every start and end of a training
is appended to ``$SHARDQ_CHAOS_DIR/trainings.log`` (one JSON line, O_APPEND, so concurrent
worker processes never interleave a line): the history checker reads it to prove what ran.
A shard listed in ``$SHARDQ_CHAOS_DIR/poison`` kills its worker process (like an OOM kill),
so the task is never answered and ends in the DLQ.

The module defines no ``reduce``: reduce tasks use the default FedAvg, as for examples.linear.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from examples import linear


def _dir() -> Path | None:
    raw = os.environ.get("SHARDQ_CHAOS_DIR")
    return Path(raw) if raw else None


def log_event(event: str, task: Any) -> None:
    """Append one training event to the chaos log."""
    d = _dir()
    if d is None:
        return
    line = json.dumps(
        {
            "event": event,
            "job": task.job_id,
            "round": task.round,
            "shard": task.shard_id,
            "pid": os.getpid(),
            "t": time.time(),
        }
    )
    fd = os.open(d / "trainings.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def poisoned(shard_id: int) -> bool:
    """True while ``shard_id`` is listed in the poison file."""
    d = _dir()
    if d is None or not (d / "poison").exists():
        return False
    return shard_id in json.loads((d / "poison").read_text() or "[]")


def train(task: Any, ctx: Any) -> dict[str, Any]:
    """examples.linear.train after ``hyperparameters.sleep`` seconds of (heartbeated) work."""
    log_event("start", task)
    if poisoned(task.shard_id):
        os._exit(137)  # the container was OOM-killed: no result, no release, no delete
    seconds = float(task.hyperparameters.get("sleep", 0))
    if task.shard_id in task.hyperparameters.get("slow_shards", ()):
        seconds *= 10  # a straggler: ten times slower than the others
    steps = 10
    for i in range(steps):
        time.sleep(seconds / steps)
        ctx.progress((i + 1) / (2 * steps))
    out = linear.train(task, ctx)
    log_event("end", task)
    return out
