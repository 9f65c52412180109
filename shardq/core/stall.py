"""Noticing a job that stopped moving: ``watch`` and the dashboard say why instead of an ETA.

A rate measured over the last seconds says nothing once results stop coming: a result rejected
into the results DLQ, or a task whose worker died and whose lease runs out only at the
visibility timeout, leaves the counters where they are. ``StallWatch`` remembers when a job's
outcome counters last moved; after ``stall_after_s`` without a move, while the job is RUNNING,
it reads the queues once (``GetQueueAttributes``: approximate counts, cheap and flat) and names
what holds the job:

* messages in the results DLQ or the task DLQ (a result the aggregator rejected, a task no
  handler took out): ``shardq dlq show`` shows them;
* tasks in flight on the task queue (a worker holds each until its lease runs out);
* tasks visible on the task queue that nobody takes (no worker running).

With none of these (a round waiting for its deadline, say) nothing is reported: there is no
evidence of a stall. The queues are only read once the counters stood still for the threshold,
so a job that moves costs no SQS call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from shardq.core.cost import Assumptions

# The workers' default task lease (shardq.worker.lease.DEFAULT_LEASE_S; the cost model's
# ``visibility_seconds`` default, which tests/unit/test_cost.py keeps equal to it).
WORKER_LEASE_S = Assumptions().visibility_seconds

if TYPE_CHECKING:
    from shardq.core.jobstore import JobRecord

# Seconds without a recorded outcome before a running job is looked at for a stall.
DEFAULT_STALL_AFTER_S = 120.0
# Counter kinds that move when an outcome is recorded (ok, failed, diverged).
_OUTCOME_COUNTERS = ("ok", "fail", "div")


def span(seconds: float) -> str:
    """``5m12s``, ``1h02m``, ``12.3s``: the CLI's duration format (the core cannot import it)."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass(frozen=True)
class QueueState:
    """A queue's approximate depths and its visibility timeout, from one ``GetQueueAttributes``."""

    visible: int
    in_flight: int
    visibility_timeout_s: int | None


def queue_state(sqs: Any, url: str) -> QueueState:
    """The queue's visible and in-flight message counts and its visibility timeout (one call)."""
    attrs = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "VisibilityTimeout",
        ],
    )["Attributes"]
    timeout = attrs.get("VisibilityTimeout")
    return QueueState(
        visible=int(attrs.get("ApproximateNumberOfMessages", 0)),
        in_flight=int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
        visibility_timeout_s=int(timeout) if timeout is not None else None,
    )


@dataclass(frozen=True)
class Stall:
    """Why a job stands still: ``reason`` is ``dlq``, ``in_flight`` or ``queued``; ``message`` the
    warning line ``watch`` prints and the dashboard shows."""

    idle_s: float
    reason: str
    message: str
    in_flight: int = 0
    queued: int = 0
    results_dlq: int = 0
    tasks_dlq: int = 0
    visibility_timeout_s: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (the dashboard job API's ``stall`` field)."""
        return dict(self.__dict__)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def explain(idle_s: float, *, tasks: QueueState | None, results_dlq: int, tasks_dlq: int) -> Stall | None:
    """The stall a job shows after ``idle_s`` seconds without an outcome, given the queues; None
    when nothing holds it (no message in flight, queued or dead-lettered)."""
    idle = f"no result for {span(idle_s)}"
    in_flight = tasks.in_flight if tasks else 0
    queued = tasks.visible if tasks else 0
    counts = Stall(
        idle_s=round(idle_s, 1),
        reason="",
        message="",
        in_flight=in_flight,
        queued=queued,
        results_dlq=results_dlq,
        tasks_dlq=tasks_dlq,
        visibility_timeout_s=tasks.visibility_timeout_s if tasks else None,
    )
    dead = []
    if results_dlq:
        dead.append(
            f"{_plural(results_dlq, 'result')} in the results DLQ — see `shardq dlq show --queue results`"
        )
    if tasks_dlq:
        dead.append(f"{_plural(tasks_dlq, 'task')} in the task DLQ — see `shardq dlq show --queue tasks`")
    if dead:
        return replace(counts, reason="dlq", message=f"{idle}; " + "; ".join(dead))
    if in_flight:
        # Not the queue's visibility timeout: workers receive with their own short lease and renew
        # it while they train, so a task in flight is either still training or held by a worker
        # that died, which comes back within one lease.
        message = (
            f"{idle}; {_plural(in_flight, 'task')} in flight (still training, or held by a worker "
            f"that stopped: its task comes back within the workers' lease, {WORKER_LEASE_S} s by default)"
        )
        return replace(counts, reason="in_flight", message=message)
    if queued:
        waiting = _plural(queued, "task")
        message = f"{idle}; {waiting} waiting on the task queue and none taken: is a worker running?"
        return replace(counts, reason="queued", message=message)
    return None


class StallWatch:
    """Follows one job's outcome counters and explains a stall once they stand still too long.

    Parameters
    ----------
    sqs:
        A boto3 SQS client.
    queues:
        Queue name → URL: ``tasks``, ``results-dlq`` and ``tasks-dlq`` are read (any may be
        missing: that queue is not looked at).
    stall_after_s:
        Seconds without a recorded outcome before the queues are read.
    clock:
        Seconds (monotonic or since the epoch: only differences are used); injectable for tests.
    """

    def __init__(
        self,
        sqs: Any,
        queues: Mapping[str, str],
        *,
        stall_after_s: float = DEFAULT_STALL_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if stall_after_s <= 0:
            raise ValueError(f"stall_after_s must be a number of seconds > 0, got {stall_after_s}")
        self.sqs = sqs
        self.queues = dict(queues)
        self.stall_after_s = stall_after_s
        self.clock = clock
        self._signature: Any = None
        self._since = 0.0

    @staticmethod
    def signature(job: JobRecord) -> tuple[Any, ...]:
        """What moves when the job makes progress: its status, phase and outcome counters."""
        counters = sorted((k, v) for k, v in job.counters.items() if k[0] in _OUTCOME_COUNTERS)
        return (job.status, job.round, job.phase, job.retry_generation, tuple(counters))

    def observe(self, job: JobRecord) -> Stall | None:
        """The job's stall after this observation, or None (moving, finished, or nothing holds it)."""
        now = self.clock()
        sig = self.signature(job)
        if sig != self._signature:
            self._signature, self._since = sig, now
            return None
        idle = now - self._since
        if job.terminal or idle < self.stall_after_s:
            return None
        return explain(
            idle,
            tasks=self._state("tasks"),
            results_dlq=self._depth("results-dlq"),
            tasks_dlq=self._depth("tasks-dlq"),
        )

    def _state(self, name: str) -> QueueState | None:
        url = self.queues.get(name)
        return queue_state(self.sqs, url) if url else None

    def _depth(self, name: str) -> int:
        state = self._state(name)
        return state.visible + state.in_flight if state else 0


__all__ = ["DEFAULT_STALL_AFTER_S", "QueueState", "Stall", "StallWatch", "explain", "queue_state", "span"]
