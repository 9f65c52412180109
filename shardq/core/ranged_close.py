"""A big map round's close, in ranges: each range of ``CLOSE_RANGE_SHARDS`` shards is read and
digested once, in its own invocation, and the last digest stored finishes the job.

One invocation reading every result holds a round's close to about 40,000 shards (BENCHMARKS
§10); in ranges, a million-shard round closes in 100 invocations side by side. ``RangedClose`` is a
part of ``shardq.core.advance.Advancer`` (a mixin: ``Advancer._close`` hands a ranged round here,
and ``Engine.close_range`` runs one range); ``shardq.core.advance`` re-exports the names below.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from shardq.core import rounds
from shardq.core.contracts import MAX_GATHERED_TASKS, ValidationError
from shardq.core.finalize import Finisher, merge_ranges
from shardq.core.jobstore import JobRecord, JobStore

# A map round of more shards than this is closed in ranges of this many, each in its own
# invocation (≈ 10 s of one 512 MB Lambda per range on AWS; DynamoDB reads a range as one key
# range). One invocation reading every result holds the close to ≈ 40,000 shards (BENCHMARKS §10);
# the rounds that must close at once (data_parallel, sweep) are held to the same size as a range.
CLOSE_RANGE_SHARDS = MAX_GATHERED_TASKS


def close_ranges(kind: str, tasks: int, range_shards: int = CLOSE_RANGE_SHARDS) -> int:
    """How many ranges a round of ``tasks`` closes in: 0 (one invocation closes it) unless it is a
    map round of more than ``range_shards``."""
    return math.ceil(tasks / range_shards) if kind == "map" and tasks > range_shards else 0


# Ranges handed out but not all stored after this long are handed out again (the watchdog tick):
# longer than a range takes plus Lambda's async retries of a failed one.
CLOSE_RANGE_LEASE_S = 300.0
# A close range stops this long before its invocation's deadline and hands the rest of its shards
# on: a slow read (throttling, a busy local cloud) then makes progress instead of timing out.
CLOSE_RANGE_MARGIN_S = 30.0


class CloseRangeIncomplete(RuntimeError):
    """A close range stopped near its invocation's deadline; its checkpoint says where it goes on."""

    def __init__(self, job_id: str, round_no: int, index: int) -> None:
        super().__init__(
            f"close range {index} of job {job_id} round {round_no} continues in a new invocation"
        )
        self.job_id, self.round, self.index = job_id, round_no, index


# Hands ranges of a round's close out: (job_id, round, range indexes). Inline when None.
RangeDispatch = Callable[[str, int, list[int]], None]
# The splitter's event for one range of a big round's close: {"shardq_close": {"job_id", "round", "range"}}.
CLOSE_KEY = "shardq_close"


def lambda_range_dispatch(lam: Any, function: str) -> RangeDispatch:
    """Hand each range to its own asynchronous invocation of ``function`` (the splitter), so they
    run side by side; Lambda retries a failed one twice, the close's watchdog tick after that."""

    def dispatch(job_id: str, round_no: int, indexes: list[int]) -> None:
        for index in indexes:
            payload = {CLOSE_KEY: {"job_id": job_id, "round": round_no, "range": index}}
            lam.invoke(FunctionName=function, InvocationType="Event", Payload=json.dumps(payload).encode())

    return dispatch


class RangedClose:
    """The ranged-close half of the advancer (a mixin of ``shardq.core.advance.Advancer``)."""

    store: JobStore
    finisher: Finisher
    ticker: rounds.Ticker
    clock: Callable[[], float]
    metric: Callable[[str, float, str], None]
    dispatch_ranges: RangeDispatch | None
    range_shards: int

    def _close_in_ranges(self, job: JobRecord, ending: tuple[str, str | None]) -> bool:
        """Close a big map round in ranges: hand them out, or put their digests together and end
        the job with ``ending`` (status, error): SUCCEEDED, or FAILED over its failure budget.

        Each range (``close_range``) reads its shards once, writes its manifest part files and
        stores a digest of a few KB, counted once on the job. The close claim is given back once
        the ranges are out, so whichever invocation stores the last digest (or any later one)
        sums the digests into the round's summary and finishes the job. A watchdog tick (a
        delayed results-queue message) comes back after ``CLOSE_RANGE_LEASE_S``: ranges still
        missing then (a lost or failed invocation) are handed out again.
        """
        round_no, count = job.round, close_ranges(job.kind, job.task_count, self.range_shards)
        if job.ranges_done(round_no) >= count:
            digests = self.store.close_parts(job.job_id, round_no)
            acc, _ = merge_ranges(digests)
            self.store.put_round_summary(job.job_id, round_no, acc.summary(round_no, job.round_started_at))
            self.finisher.finalize(job, ending[0], ending[1], digests=digests)
            return False
        now = self.clock()
        if job.ranges_sent_at is not None and now - job.ranges_sent_at < CLOSE_RANGE_LEASE_S:
            # Handed out, not all back yet: the last one finishes the job. Unless it came back
            # while this call held the claim (it could not take it): then look again, at once.
            self.store.release_close(job.job_id, round_no)
            return self.store.get_job(job.job_id).ranges_done(round_no) >= count
        stored = {int(d["range"]) for d in self.store.close_parts(job.job_id, round_no)}
        missing = [k for k in range(count) if k not in stored]
        if not self.store.ranges_sent(job.job_id, round_no, now):
            return True  # the job moved meanwhile: look again
        self.ticker.arm(rounds.Tick(job.job_id, round_no, now + CLOSE_RANGE_LEASE_S))
        if self.dispatch_ranges is None:
            for index in missing:
                self.close_range(job.job_id, round_no, index)
        else:
            self.dispatch_ranges(job.job_id, round_no, missing)
        self.metric("CloseRangesDispatched", len(missing), "Count")
        self.store.release_close(job.job_id, round_no)
        return True

    def close_range(self, job_id: str, round_no: int, index: int, *, deadline: float | None = None) -> bool:
        """Range ``index`` of round ``round_no``'s close: digest its shards and store it, once.

        Returns False when there is nothing to do: the job is no longer closing that round, the
        range is stored already (a redelivered or re-dispatched range), or a duplicate
        invocation of it checkpointed further first. With a ``deadline``, the range stops
        ``CLOSE_RANGE_MARGIN_S`` before it, stores a checkpoint and raises
        ``CloseRangeIncomplete`` (its caller hands the range on); the next invocation resumes.
        """
        job = self.store.get_job(job_id)
        if job.terminal or job.round != round_no or job.closed_round != round_no:
            return False
        first = index * self.range_shards
        last = min(first + self.range_shards, job.task_count) - 1
        if first > last:
            raise ValidationError(
                "close range", [f"range {index} is past job {job_id}'s {job.task_count} shards"]
            )
        if self.store.close_part_stored(job_id, round_no, index):
            return False  # a duplicate of a range that finished: do not read its shards again
        partial = self.store.close_checkpoint(job_id, round_no, index)
        stop = None if deadline is None else (lambda: self.clock() > deadline - CLOSE_RANGE_MARGIN_S)
        digest = self.finisher.digest_range(job, round_no, index, first, last, partial=partial, stop=stop)
        if "next_shard" in digest:
            if not self.store.put_close_checkpoint(
                job_id, round_no, index, digest, (partial or {}).get("seq", 0)
            ):
                return False
            raise CloseRangeIncomplete(job_id, round_no, index)
        return self.store.put_close_part(job_id, round_no, index, digest)
