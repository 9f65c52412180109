"""What preemption safety costs: task checkpoints (S3 requests and storage) and the lease's
heartbeats at fleet scale. ``shardq estimate --checkpoint-every S --checkpoint-mib M`` adds them.

Counted from how ``shardq.worker.checkpoints`` and ``shardq.worker.lease`` work:

* each save is one tar upload (a single PUT, or above the multipart threshold one request to start,
  one per 16 MiB part and one to complete), the manifest PUT, the pointer PUT and, from the third
  save on, one DeleteObjects of the checkpoint no longer kept (priced as a PUT-tier request);
* each attempt reads the pointer once (a GET; a 404 on a fresh start); a resume adds the manifest
  and the tar (interruptions are not modelled: add them with ``resumes``);
* storage: at most two checkpoints per running task; the bucket is versioned, and the stack's
  ``expire-task-checkpoints`` rule removes superseded versions after a day, so every save is kept
  about a day (``NONCURRENT_DAYS``);
* heartbeats: one ChangeMessageVisibility per running task every lease/3, i.e.
  3,600 × 3 / lease calls per slot-hour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from shardq.core.cost import Assumptions, JobShape, price

MULTIPART_THRESHOLD_MIB = 8
MULTIPART_CHUNK_MIB = 16
# Days a superseded checkpoint version is kept (the stack's expire-task-checkpoints rule).
NONCURRENT_DAYS = 1
DAYS_PER_MONTH = 30


@dataclass(frozen=True)
class CheckpointPlan:
    """How often a task checkpoints and how big a checkpoint is; ``resumes``: attempts that resume."""

    every_seconds: float
    size_mib: float
    resumes: int = 0


def puts_per_save(size_mib: float) -> int:
    """S3 PUT-tier requests of one save: the tar (multipart above 8 MiB), manifest, pointer, prune."""
    tar = 1 if size_mib <= MULTIPART_THRESHOLD_MIB else math.ceil(size_mib / MULTIPART_CHUNK_MIB) + 2
    return tar + 3


def checkpoint_costs(job: JobShape, a: Assumptions, plan: CheckpointPlan) -> dict[str, Any]:
    """Saves, requests, storage and their cost for ``job``'s train tasks (reduces do not checkpoint)."""
    tasks = job.tasks_per_round * job.rounds
    saves_per_task = math.floor(a.task_seconds / plan.every_seconds) if plan.every_seconds > 0 else 0
    saves = tasks * saves_per_task
    puts = saves * puts_per_save(plan.size_mib)
    gets = tasks + 3 * plan.resumes
    gb = plan.size_mib / 1024
    # Two live per running task for its run time, plus every save for a day as a superseded version.
    running_hours = tasks * a.task_seconds / 3600
    gb_months = (2 * gb * running_hours / 24 + saves * gb * NONCURRENT_DAYS) / DAYS_PER_MONTH
    usd = {
        "puts": puts * price("s3_standard_per_thousand_put_requests") / 1e3,
        "gets": gets * price("s3_standard_per_thousand_get_requests") / 1e3,
        "storage": gb_months * price("s3_standard_per_gb_month"),
    }
    return {
        "saves_per_task": saves_per_task,
        "saves": saves,
        "put_requests": puts,
        "get_requests": gets,
        "gb_months": gb_months,
        "usd": usd,
        "total_usd": sum(usd.values()),
    }


def checkpoint_lines(c: dict[str, Any]) -> list[dict[str, Any]]:
    """The estimate's table lines for ``checkpoint_costs``."""
    return [
        {"item": "S3 PUT requests (checkpoints)", "count": c["put_requests"], "usd": c["usd"]["puts"]},
        {"item": "S3 GET requests (checkpoints)", "count": c["get_requests"], "usd": c["usd"]["gets"]},
        {"item": "S3 GB-months (checkpoints)", "count": c["gb_months"], "usd": c["usd"]["storage"]},
    ]


def heartbeat_at_scale(lease_seconds: int, slot_hours: float = 1000.0) -> dict[str, float]:
    """What the lease's heartbeats cost per ``slot_hours`` busy slot-hours (FIFO request price)."""
    per_hour = 3600 / max(0.5, lease_seconds / 3)
    calls = per_hour * slot_hours
    return {
        "lease_seconds": lease_seconds,
        "calls_per_slot_hour": per_hour,
        "slot_hours": slot_hours,
        "calls": calls,
        "usd": calls * price("sqs_fifo_per_million_requests") / 1e6,
    }
