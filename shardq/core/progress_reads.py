"""Reads that do not grow with the job: a job's outcomes recorded since the last read.

``watch`` and the dashboard refresh every couple of seconds. Reading a running round's every
result item on each refresh costs what the round holds (hundreds of MB per refresh at 100,000
shards, all from one partition); reading the job record costs one item. This module adds the
third read: the outcomes *recorded since the last read*, from the job table's sparse GSI
``by_recorded`` (partition ``pk`` = the job, sort key ``recorded_at``; only result items carry
``recorded_at``), so a refresh costs what changed since the previous one.

Why a GSI and not a key range written beside each result: the index fills itself from the
attributes a result item already has, so the exactly-once recording transaction (99 results and
their counter in one ``TransactWriteItems``) is unchanged; the price is one index write per
result (the projection leaves out the dead task's body).

Why the overlap: ``recorded_at`` is stamped by the recording Lambda just before its transaction
commits, and the index is eventually consistent, so an outcome can become readable a moment
after one stamped later. Each read starts ``OVERLAP_S`` before the newest stamp seen and drops
what it returned before, so such a straggler is still returned once; the cost of the overlap is
the outcomes recorded in those seconds, not the job's. Once the reader's own clock is past that
(the previous read was made more than ``OVERLAP_S + SKEW_S`` after the newest stamp), nothing
stamped before can still appear, so an idle job's last outcomes are not read again and again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from shardq.core.jobstore import JobRecord, JobStore, ResultRecord
from shardq.core.store.keys import _pk, _result_key

# The job table's index of outcomes by the time they were recorded (stacks/components/job_store.py).
RECORDED_INDEX = "by_recorded"
# Seconds each read reaches back before the newest stamp seen (see the module docstring).
OVERLAP_S = 5.0
# How far the reader's clock may be ahead of the recording Lambdas' (NTP keeps both within
# milliseconds; this is the margin): used to stop re-reading an idle job's last outcomes.
SKEW_S = 5.0


class NoRecordedIndex(LookupError):
    """The job table's ``by_recorded`` index cannot be read: a stack deployed before it existed,
    or DynamoDB still builds it after an upgrade."""


@dataclass(frozen=True)
class FeedItem:
    """One outcome as the feed returns it: its record, and whether it arrived late (its round had
    closed: kept apart, never counted)."""

    record: ResultRecord
    late: bool
    sort_key: str

    @property
    def failed(self) -> bool:
        """True for a counted failed outcome."""
        return not self.late and self.record.result.status == "failed"


def _shift(stamp: str, seconds: float) -> str:
    """An ISO ``...Z`` stamp moved by ``seconds``, in the same sortable format."""
    moved = datetime.fromisoformat(stamp.replace("Z", "+00:00")) + timedelta(seconds=seconds)
    return moved.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _stamp(epoch_s: float) -> str:
    """Seconds since the epoch as a ``recorded_at`` stamp."""
    moment = datetime.fromtimestamp(epoch_s, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class OutcomeFeed:
    """A job's outcomes in the order they were recorded, each returned once.

    Parameters
    ----------
    store:
        The job table.
    job_id:
        The job followed.
    overlap_s:
        How far each read reaches back before the newest stamp seen.

    ``read()`` returns what was recorded since the previous read (the first read: everything,
    unless ``seed_latest`` or ``seed`` placed the cursor). An outcome deleted and recorded again
    (a retried shard) carries a new stamp and is returned again.
    """

    def __init__(self, store: JobStore, job_id: str, *, overlap_s: float = OVERLAP_S) -> None:
        self.store = store
        self.job_id = job_id
        self.overlap_s = overlap_s
        self.cursor: str | None = None
        # When (the reader's clock, seconds since the epoch) the last read, or full read, began.
        self.read_at: float | None = None
        # (sort key, stamp) returned with a stamp inside the overlap: not returned again.
        self._recent: set[tuple[str, str]] = set()

    def seed(self, stamp: str | None) -> None:
        """Start after ``stamp`` (less the overlap): what an earlier full read already returned."""
        if stamp and (self.cursor is None or stamp > self.cursor):
            self.cursor = stamp

    def seed_latest(self) -> None:
        """Start at the newest outcome recorded so far (one index item read), so the first
        ``read`` returns only what comes after it, not the job's history."""
        newest = next(self._query(newest_first=True, limit=1), None)
        if newest is not None:
            self._remember(newest)
        else:
            # Nothing recorded yet: everything to come is new, and the first read is cheap anyway.
            self.cursor = ""

    def floor(self) -> str | None:
        """The oldest stamp the next read must cover: the newest seen less the overlap, or, when
        later, the last read's time less the overlap and the clock skew allowed."""
        floors = []
        if self.cursor:
            floors.append(_shift(self.cursor, -self.overlap_s))
        if self.read_at is not None:
            floors.append(_stamp(self.read_at - self.overlap_s - SKEW_S))
        return max(floors) if floors else None

    def read(self) -> list[FeedItem]:
        """Outcomes recorded since the last read, oldest first; each outcome once."""
        start = self.floor()
        began = self.store.clock()
        fresh: list[FeedItem] = []
        for item in self._query(since=start):
            entry = self._entry(item)
            if (entry.sort_key, entry.record.recorded_at) in self._recent:
                continue
            self._remember(item)
            fresh.append(entry)
        self.read_at = began
        # Forget what the next read no longer reaches: it cannot be returned twice.
        floor = self.floor()
        if floor:
            self._recent = {k for k in self._recent if k[1] >= floor}
        return fresh

    def _remember(self, item: dict[str, Any]) -> None:
        stamp = item["recorded_at"]["S"]
        self._recent.add((item["sk"]["S"], stamp))
        if self.cursor is None or stamp > self.cursor:
            self.cursor = stamp

    @staticmethod
    def _entry(item: dict[str, Any]) -> FeedItem:
        sort_key = item["sk"]["S"]
        return FeedItem(
            record=ResultRecord.from_item(item), late=sort_key.startswith("LATE#"), sort_key=sort_key
        )

    def _query(
        self, *, since: str | None = None, newest_first: bool = False, limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Index items of the job, by stamp, from ``since`` on (a key range: only those are read)."""
        kwargs: dict[str, Any] = {
            "TableName": self.store.table,
            "IndexName": RECORDED_INDEX,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": _pk(self.job_id)},
            "ScanIndexForward": not newest_first,
        }
        if since:
            kwargs["KeyConditionExpression"] += " AND recorded_at >= :since"
            kwargs["ExpressionAttributeValues"][":since"] = {"S": since}
        if limit is not None:
            kwargs["Limit"] = limit
        while True:
            try:
                resp = self.store.ddb.query(**kwargs)
            except ClientError as exc:
                # "does not have the specified index" (a stack deployed before it), "Cannot read
                # from backfilling global secondary index" (being built after an upgrade).
                if exc.response.get("Error", {}).get("Code") != "ValidationException" or "index" not in str(
                    exc
                ):
                    raise
                raise NoRecordedIndex(
                    f"table {self.store.table} has no index {RECORDED_INDEX}; redeploy the stack "
                    "(cdk deploy) to read only new outcomes on each refresh"
                ) from exc
            yield from resp.get("Items", [])
            after = resp.get("LastEvaluatedKey")
            if after is None or limit is not None:
                return
            kwargs["ExclusiveStartKey"] = after


# Polls a failure counter may stay ahead of the failures the index returned before one full read
# settles it (an outcome that became readable later than the overlap allows: rare).
PENDING_POLLS = 3


def _failed_count(job: JobRecord) -> int:
    return sum(v for k, v in job.counters.items() if k[0] == "fail")


class FailureFollower:
    """A job's newly recorded failures and its late results, for ``watch``: what each poll costs is
    what was recorded since the last one, not the job's history.

    The index is read only when a failure counter moved (or one is still unaccounted for), or
    while the job has a closed round (late results have no counter). The first poll catches up
    once: a job with failures already is read from its start, one without from its newest
    outcome on. A table without the index (a stack deployed before it) is read as before: the
    failed outcomes in full whenever the counter moves, the late ones on every poll.
    """

    def __init__(self, store: JobStore, job_id: str, *, overlap_s: float = OVERLAP_S) -> None:
        self.store = store
        self.job_id = job_id
        self.feed = OutcomeFeed(store, job_id, overlap_s=overlap_s)
        self.indexed = True
        self.started = False
        self.printed: set[tuple[str, str]] = set()
        self.late_keys: set[str] = set()
        self._known: set[str] = set()
        self._failed_last = 0
        self._generation = 0
        self._pending = 0

    @property
    def late(self) -> int:
        """Late results seen so far."""
        return len(self.late_keys)

    def poll(self, job: JobRecord) -> list[ResultRecord]:
        """Failed outcomes recorded since the last poll (each once, oldest first)."""
        failed_now = _failed_count(job)
        if job.retry_generation != self._generation:
            # A retry forgot failed outcomes: the failures that exist now are counted afresh.
            self._generation, self._known = job.retry_generation, set()
        if not self.indexed:
            return self._unindexed(job, failed_now)
        try:
            fresh = self._indexed(job, failed_now)
        except NoRecordedIndex:
            self.indexed = False
            return self._unindexed(job, failed_now)
        self._failed_last = failed_now
        return fresh

    def _indexed(self, job: JobRecord, failed_now: int) -> list[ResultRecord]:
        if not self.started:
            self.started = True
            if failed_now == 0:
                # Nothing to print yet: start at the newest outcome (a failure racing this read is
                # settled by the pending check below, on a later poll).
                self.feed.seed_latest()
                if job.closed_round is not None:
                    self.late_keys = {self._late_key(r) for r in self.store.late_results(self.job_id)}
                return []
            return self._take(self.feed.read(), failed_now)
        if failed_now == self._failed_last and job.closed_round is None and not self._pending:
            return []
        return self._take(self.feed.read(), failed_now)

    def _take(self, items: list[FeedItem], failed_now: int) -> list[ResultRecord]:
        fresh = []
        for item in items:
            if item.late:
                self.late_keys.add(item.sort_key)
            elif item.failed:
                self._known.add(item.sort_key)
                fresh.extend(self._unprinted(item.sort_key, item.record))
        if len(self._known) < failed_now:
            self._pending += 1
            if self._pending > PENDING_POLLS:
                # A failure the index never returned within the overlap: settle it with one full read.
                fresh.extend(self._full_read())
        else:
            self._pending = 0
        return fresh

    def _full_read(self) -> list[ResultRecord]:
        self._pending = 0
        fresh = []
        for row in self.store.failed_results(self.job_id):
            key = _sort_key(row)
            self._known.add(key)
            fresh.extend(self._unprinted(key, row))
        return fresh

    def _unindexed(self, job: JobRecord, failed_now: int) -> list[ResultRecord]:
        fresh = self._full_read() if failed_now != self._failed_last or not self.started else []
        self.started = True
        self._failed_last = failed_now
        if job.closed_round is not None:
            self.late_keys = {self._late_key(r) for r in self.store.late_results(self.job_id)}
        return fresh

    def _unprinted(self, key: str, row: ResultRecord) -> list[ResultRecord]:
        if (key, row.recorded_at) in self.printed:
            return []
        self.printed.add((key, row.recorded_at))
        return [row]

    @staticmethod
    def _late_key(row: ResultRecord) -> str:
        return "LATE#" + _sort_key(row).removeprefix("RES#")


class JobOutcomes:
    """Every counted outcome of a job, held in memory and brought up to date from what was recorded
    since the last read: the dashboard's view of a job's results.

    The first read (and the first after a retry forgot failed outcomes: ``retry_generation``
    moved) reads the job's result items by key, in full; every later one reads the index from
    the newest stamp seen (less the overlap). On a table without the index every read is a full
    one, as before the index existed.
    """

    def __init__(self, store: JobStore, job_id: str, *, overlap_s: float = OVERLAP_S) -> None:
        self.store = store
        self.job_id = job_id
        self.overlap_s = overlap_s
        self.indexed = True
        self._rows: dict[str, ResultRecord] = {}
        self._feed: OutcomeFeed | None = None
        self._generation: int | None = None
        # The dashboard's server answers from a thread pool: one refresh of a job at a time.
        self._lock = threading.Lock()

    def rows(self, job: JobRecord) -> list[ResultRecord]:
        """The job's counted outcomes, in (round, type, shard) order."""
        with self._lock:
            return self._rows_now(job)

    def _rows_now(self, job: JobRecord) -> list[ResultRecord]:
        if self._feed is None or job.retry_generation != self._generation or not self.indexed:
            self._load(job)
        else:
            try:
                fresh = self._feed.read()
            except NoRecordedIndex:
                self.indexed = False
                self._load(job)
            else:
                self._rows.update((i.sort_key, i.record) for i in fresh if not i.late)
        return [self._rows[k] for k in sorted(self._rows)]

    def _load(self, job: JobRecord) -> None:
        began = self.store.clock()
        self._rows = {_sort_key(row): row for row in self.store.iter_results(self.job_id)}
        self._generation = job.retry_generation
        self._feed = OutcomeFeed(self.store, self.job_id, overlap_s=self.overlap_s)
        newest = max((row.recorded_at for row in self._rows.values()), default=None)
        # Nothing recorded yet: the feed reads from the start, which holds what comes next alone.
        self._feed.seed(newest)
        # The full read saw everything recorded before it began (strongly consistent, by key).
        self._feed.read_at = began


def _sort_key(row: ResultRecord) -> str:
    """The result item's sort key (``RES#r0003#train#000042``), from its result."""
    r = row.result
    return str(_result_key(r.job_id, r.round, r.task_type, r.shard_id)["sk"]["S"])


__all__ = [
    "OVERLAP_S",
    "RECORDED_INDEX",
    "FailureFollower",
    "FeedItem",
    "JobOutcomes",
    "NoRecordedIndex",
    "OutcomeFeed",
]
