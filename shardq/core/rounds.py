"""Round policy: when a ``data_parallel`` round's training closes, and the clock that closes it.

A round's train phase closes when

* every participant has an outcome (the default, and the only rule without ``quorum``), or
* ``quorum.fraction`` of its participants succeeded, or
* its deadline (``quorum.deadline_seconds`` after the round started) passed with at least
  ``participation.min_shards`` successes;

and the job fails when the deadline passes with fewer. Closing freezes the round: results that
arrive later are recorded as late (``JobStore``) and never counted or reduced.

The deadline must not depend on a result arriving (a stalled round gets none), so arming a
round sends a *tick*: a message to the results queue, delayed up to SQS's 15-minute maximum.
The aggregator that receives it advances the job, which closes or fails the round if it is
due, or sends the tick again for the time left.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shardq.core.contracts import ValidationError
from shardq.core.jobstore import JobRecord

# SQS's longest per-message delay.
MAX_TICK_DELAY_S = 900
TICK_KEY = "shardq_tick"


@dataclass(frozen=True)
class RoundFailed:
    """The round cannot close: the job fails with ``message``."""

    message: str


WAIT = "wait"
CLOSE = "close"
Verdict = str | RoundFailed


def started_at(job: JobRecord) -> float | None:
    """Seconds since the epoch at which the job's current round started."""
    if not job.round_started_at:
        return None
    return datetime.fromisoformat(job.round_started_at.replace("Z", "+00:00")).timestamp()


def due_at(job: JobRecord) -> float | None:
    """When the current round's deadline passes (None without one)."""
    quorum = job.request.quorum
    begun = started_at(job)
    if quorum is None or quorum.deadline_seconds is None or begun is None:
        return None
    return begun + quorum.deadline_seconds


def verdict(job: JobRecord, now: float) -> Verdict:
    """What the job's current (round, phase) calls for: ``WAIT``, ``CLOSE`` or ``RoundFailed``."""
    r, phase = job.round, job.phase
    expected = job.expected(r, phase)
    if job.done(r, phase) >= expected or (phase == "train" and job.closed_round == r):
        return CLOSE
    quorum = job.request.quorum
    if phase != "train" or quorum is None:
        return WAIT
    ok = job.ok(r, phase)
    if ok >= math.ceil(quorum.fraction * expected - 1e-9):
        return CLOSE
    due = due_at(job)
    if due is None or now < due:
        return WAIT
    participation = job.request.participation
    least = participation.min_shards if participation else 1
    if ok >= least:
        return CLOSE
    return RoundFailed(
        f"round {r} reached its deadline ({quorum.deadline_seconds} s) with {ok} of {expected} shards "
        f"succeeded, below participation.min_shards={least}; give the round more time "
        "(quorum.deadline_seconds) or workers, or lower min_shards"
    )


@dataclass(frozen=True)
class Tick:
    """A round's deadline check, delivered by the results queue."""

    job_id: str
    round: int
    due: float

    def body(self) -> str:
        """The message body."""
        return json.dumps({TICK_KEY: {"job_id": self.job_id, "round": self.round, "due": self.due}})

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Tick:
        """The tick of a decoded ``{"shardq_tick": {...}}`` body (ValidationError if malformed)."""
        raw: Any = data.get(TICK_KEY)
        try:
            return cls(job_id=str(raw["job_id"]), round=int(raw["round"]), due=float(raw["due"]))
        except (TypeError, KeyError, ValueError) as exc:
            raise ValidationError(
                "Tick", [f"{TICK_KEY} needs job_id, round and due, got {raw!r:.80}"]
            ) from exc


@dataclass
class Ticker:
    """Sends ticks to the results queue, each delayed until its deadline (15 minutes at most)."""

    sqs: Any
    queue_url: str
    clock: Callable[[], float]

    def arm(self, tick: Tick) -> None:
        """Deliver ``tick`` at its ``due`` time, or in 15 minutes when that is later (it re-arms)."""
        delay = min(MAX_TICK_DELAY_S, max(0, math.ceil(tick.due - self.clock())))
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=tick.body(), DelaySeconds=delay)

    def arm_round(self, job: JobRecord) -> None:
        """Arm the deadline of the job's current round, if it has one."""
        due = due_at(job)
        if due is not None and job.phase == "train":
            self.arm(Tick(job.job_id, job.round, due))
