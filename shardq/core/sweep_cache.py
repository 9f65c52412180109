"""What an asynchronous sweep's pass reads, kept by a warm aggregator between passes: each pass
reads what changed since the previous one, not the job's every decision and result.

A pass (``shardq.core.async_sweep``) decides on the job's decisions and recorded results. Read in
full, both grow with the trial count: at 10,000 trials a pass read about 29,000 items (8.6 MB,
2,200 read units) on every result (BENCHMARKS.md §17). This cache, one per ``Advancer`` (a warm
Lambda container), keeps both per job and brings them up to date:

* **decisions**: every pass writes its decisions in one log item (``ASYNCLOG#<seq>``, in the
  deciding transaction: ``store.sweeps``). The cache knows the decisions up to pass ``seq``; a pass
  that reads ``async_seq = seen`` reads the log items ``seq + 1 … seen`` (usually none or one:
  the container's own previous pass is added as it commits). A job decided before the log existed,
  or a gap, is read in full once.
* **results**: the job's outcomes recorded since the last read, from the ``by_recorded`` index
  (``progress_reads.OutcomeFeed``, with its overlap), plus the results the invocation itself just
  recorded (``note``: the index is eventually consistent, so a result read back from it at once
  may be missing). The view is then checked against the job record's counters: when a rung has
  fewer results than it counted (another invocation's result not yet in the index), the results
  are read in full, strongly consistently, as before. A retry (``retry_generation`` moved, failed
  outcomes deleted) reloads them too.

Why it stays exactly once: the cache only chooses what a pass *reads*. Every decision is still
written by the one transaction conditional on ``async_seq`` being the ``seen`` the pass read
(``JobStore.decide``); a view that lags (a result not yet seen) decides what an earlier pass would
have decided, and never ends a sweep early (a task whose result is not in the view is still in
flight). Rejected: per-rung running state (result counts, the top-k boundary) in items updated by
the recording transaction: it would put the sweep's rule into the store's hottest transaction,
shared by every kind of job, and ASHA's rank of a result changes as later ones arrive (the
boundary moves), so each update still needs the rung's ordered results.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from shardq.core.contracts import ShardResult
from shardq.core.jobstore import JobRecord, JobStore, SweepDecision
from shardq.core.progress_reads import NoRecordedIndex, OutcomeFeed

Key = tuple[int, int]  # (rung, trial)
# Sweeps a container keeps at most (the least recently used is dropped, then read in full again):
# a 10,000-trial sweep's view is tens of MB of a Lambda's memory.
MAX_JOBS = 8


@dataclass
class _Job:
    """One job's cached decisions (up to pass ``seq``) and train results."""

    seq: int = -1
    # By ``SweepDecision.ident`` (a task and its backup copy are two decisions).
    decisions: dict[tuple[int, int, int], SweepDecision] = field(default_factory=dict)
    results: dict[Key, ShardResult] = field(default_factory=dict)
    # When each result was recorded (``recorded_at``): the prefetch's overheads (``async_prefetch``).
    recorded: dict[Key, str] = field(default_factory=dict)
    feed: OutcomeFeed | None = None
    generation: int | None = None
    indexed: bool = True


@dataclass
class SweepCache:
    """Per-container cache of asynchronous sweeps' decisions and results (the module docstring)."""

    store: JobStore
    _jobs: dict[str, _Job] = field(default_factory=dict, repr=False)
    # Full reads made (decisions or results): what the benchmark and the tests watch.
    full_reads: int = 0

    def _job(self, job_id: str) -> _Job:
        entry = self._jobs.pop(job_id, None) or _Job()
        self._jobs[job_id] = entry  # the most recently used last
        while len(self._jobs) > MAX_JOBS:
            del self._jobs[next(iter(self._jobs))]
        return entry

    # -- what the aggregator tells it ---------------------------------------------------------

    def note(self, job_id: str, results: Iterable[ShardResult]) -> None:
        """Results this invocation just recorded (counted) for ``job_id``: in the next view even
        when the index does not return them yet."""
        entry = self._jobs.get(job_id)
        if entry is None or entry.feed is None:
            return  # the first view reads everything anyway
        now = self.store.stamp()  # recorded a moment ago, by this invocation
        for r in results:
            if r.task_type == "train":
                entry.results[(r.round, r.shard_id)] = r
                entry.recorded.setdefault((r.round, r.shard_id), now)

    def decided(self, job_id: str, seq: int, decisions: Iterable[SweepDecision]) -> None:
        """Pass ``seq`` committed ``decisions`` (this container's own pass)."""
        entry = self._job(job_id)
        if entry.seq == seq - 1:
            entry.decisions.update((d.ident, d) for d in decisions)
            entry.seq = seq

    def is_decided(self, job_id: str, rung: int, trial: int) -> bool:
        """True when a decision ran ``trial`` at ``rung`` (the foreign-result check): from the
        cache, else one item read."""
        entry = self._jobs.get(job_id)
        if entry is not None and (rung, trial, 0) in entry.decisions:
            return True
        return self.store.sweep_decided(job_id, rung, trial)

    def recorded(self, job_id: str) -> dict[Key, str]:
        """When each train result in the job's last view was recorded (``recorded_at``)."""
        entry = self._jobs.get(job_id)
        return dict(entry.recorded) if entry is not None else {}

    # -- the view -----------------------------------------------------------------------------

    def view(self, job: JobRecord, seen: int) -> tuple[list[SweepDecision], list[ShardResult]]:
        """The job's decisions up to pass ``seen`` (at least) and its train results, brought up to
        date with what changed since the last view."""
        entry = self._job(job.job_id)
        self._decisions(entry, job.job_id, seen)
        self._results(entry, job)
        decisions = sorted(entry.decisions.values(), key=lambda d: d.ident)
        # In key order (rung, trial), as a full read returns them: a trial source sees one history.
        return decisions, [entry.results[k] for k in sorted(entry.results)]

    def _decisions(self, entry: _Job, job_id: str, seen: int) -> None:
        if entry.seq >= seen:
            return
        newer = self.store.sweep_log(job_id, entry.seq, seen) if entry.seq >= 0 else None
        if newer is None:
            self.full_reads += 1
            entry.decisions = {d.ident: d for d in self.store.sweep_decisions(job_id)}
        else:
            entry.decisions.update((d.ident, d) for d in newer)
        entry.seq = seen

    def _results(self, entry: _Job, job: JobRecord) -> None:
        if entry.feed is None or entry.generation != job.retry_generation or not entry.indexed:
            self._load(entry, job)
            return
        try:
            fresh = entry.feed.read()
        except NoRecordedIndex:
            entry.indexed = False
            self._load(entry, job)
            return
        for item in fresh:
            r = item.record.result
            if not item.late and r.task_type == "train":
                entry.results[(r.round, r.shard_id)] = r
                entry.recorded[(r.round, r.shard_id)] = item.record.recorded_at
        per_rung: dict[int, int] = {}
        for rung, _ in entry.results:
            per_rung[rung] = per_rung.get(rung, 0) + 1
        if any(per_rung.get(rung, 0) < job.done(rung, "train") for rung in range(job.rounds)):
            self._load(entry, job)  # a result counted but not in the index yet: read them all

    def _load(self, entry: _Job, job: JobRecord) -> None:
        """Every train result, strongly consistent, and a feed that goes on from the newest."""
        self.full_reads += 1
        began = self.store.clock()
        rows = list(self.store.iter_results(job.job_id, task_type=None))
        entry.results = {
            (row.result.round, row.result.shard_id): row.result
            for row in rows
            if row.result.task_type == "train"
        }
        entry.recorded = {(row.result.round, row.result.shard_id): row.recorded_at for row in rows}
        entry.generation = job.retry_generation
        if entry.indexed:
            feed = OutcomeFeed(self.store, job.job_id)
            feed.seed(max((r.recorded_at for r in rows), default=None))
            feed.read_at = began  # the full read saw everything recorded before it began
            entry.feed = feed


__all__ = ["MAX_JOBS", "SweepCache"]
