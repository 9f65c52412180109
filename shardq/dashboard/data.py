"""What the dashboard shows, read from the job table, the bucket and the queues.

This is the one module that reads job records (``JobRecord``) and result items
(``ResultRecord``): everything it returns is a plain JSON-ready dict, so the server and the web
app never see a record's shape (a change of the records is adapted here alone). Reads only;
nothing here writes.

Timing: a result item carries ``recorded_at`` (when the aggregator recorded it) and its
ShardResult carries ``duration_s`` (the worker's own measure of the task). A timeline bar ends
at ``recorded_at`` and starts ``duration_s`` before it, so both ends are late by the time the
result spent on the results queue and in the aggregator's batch window (seconds at most on an
idle stack): the durations are exact, the positions approximate.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shardq.core import fedbuff_view
from shardq.core.budgets import cost_of
from shardq.core.contracts import JOB_STATUSES, ShardResult
from shardq.core.jobstore import JobRecord, JobStore, ResultRecord
from shardq.core.metrics import summarize_round
from shardq.core.operations import progress
from shardq.core.planning import split_s3
from shardq.core.progress_reads import JobOutcomes
from shardq.core.redrive import counts as queue_counts
from shardq.core.search import rung_history, sweep_section
from shardq.core.stall import DEFAULT_STALL_AFTER_S, StallWatch
from shardq.core.tally import plan_text, tally

STATUSES = JOB_STATUSES
KINDS = ("data_parallel", "sweep", "map")
# Queue name in the dashboard → the stack output that holds its URL.
QUEUE_OUTPUTS = {
    "tasks": "TaskQueueUrl",
    "tasks-dlq": "TaskDlqUrl",
    "results": "ResultsQueueUrl",
    "results-dlq": "ResultsDlqUrl",
}
# A timeline of more bars than this is cut to the most recent ones (the browser stays responsive).
TIMELINE_LIMIT = 5000
# Jobs whose derived data stays cached (least recently read go first).
CACHED_JOBS = 64
# Jobs whose outcomes stay in memory, brought up to date from the job table's ``by_recorded`` index
# (a 100,000-shard job's outcomes are a few hundred MB of Python objects: keep few).
FOLLOWED_JOBS = 8


def _lru(
    cache: OrderedDict[str, Any], key: str, size: int, lock: threading.Lock, make: Callable[[], Any]
) -> Any:
    """``cache[key]``, made by ``make()`` when absent; the least recently used go past ``size``."""
    with lock:
        if key not in cache:
            cache[key] = make()
        cache.move_to_end(key)
        while len(cache) > size:
            cache.popitem(last=False)
        return cache[key]


def epoch(timestamp: str | None) -> float | None:
    """Seconds since the epoch of an ISO timestamp (``...Z`` or with an offset); None when absent."""
    if not timestamp:
        return None
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _fingerprint(job: JobRecord) -> str:
    # Every recorded outcome moves a counter on the job record, so the record's fields (whose
    # repr includes the counters) change exactly when its results do: the cache is never stale.
    return hashlib.sha256(repr(job).encode()).hexdigest()


def job_row(job: JobRecord, now: float) -> dict[str, Any]:
    """A job as the job list shows it: the CLI's JobView fields plus overall progress and age."""
    view = job.view().to_dict()
    created = epoch(view["created_at"])
    finished = epoch(view["finished_at"])
    return {
        **view,
        # Every round, rung and reduce the job runs (shardq.core.tally, as the CLI counts them).
        **tally(job).to_dict(),
        "plan": plan_text(job),
        # A FedBuff job's versions, open buffer, late updates and staleness (None for other jobs).
        "fedbuff": fedbuff_view.live(job),
        "fedbuff_text": fedbuff_view.line(fedbuff_view.live(job)),
        # The CLI's wording of its cost (shardq.core.budgets.cost_text); None: unpriced and no budget.
        "cost_text": cost_of(view),
        "age_s": None if created is None else round(now - created, 1),
        "elapsed_s": None if created is None else round((finished or now) - created, 1),
        "updated_at": job.updated_at,
    }


def timeline_entry(row: ResultRecord, t0: float) -> dict[str, Any]:
    """One recorded outcome as a timeline bar: seconds since the job was created."""
    r = row.result
    end = epoch(row.recorded_at) or t0
    return {
        "round": r.round,
        "shard_id": r.shard_id,
        "task_type": r.task_type,
        "status": r.status,
        "start_s": round(end - r.duration_s - t0, 3),
        "end_s": round(end - t0, 3),
        "duration_s": r.duration_s,
        "recorded_at": row.recorded_at,
        "worker_id": r.worker_id or row.source,
        "attempt": r.attempt,
        # Where a resumed attempt started (its checkpoint's step) and the attempts before it.
        "resume_step": r.resume_step,
        "earlier_attempts": r.attempts,
        "receive_count": row.receive_count,
        "retried": r.attempt > 1 or (row.receive_count or 1) > 1,
        "source": row.source,
        "error": r.error,
        "metrics": r.metrics,
    }


def failure_entry(row: ResultRecord) -> dict[str, Any]:
    """A failed outcome with its error text and where it came from (worker or DLQ handler)."""
    r = row.result
    return {
        "round": r.round,
        "shard_id": r.shard_id,
        "task_type": r.task_type,
        "error": r.error or "(no error text)",
        "source": row.source,
        "worker_id": r.worker_id,
        "attempt": r.attempt,
        "receive_count": row.receive_count,
        "recorded_at": row.recorded_at,
    }


def fedbuff_failures(store: JobStore, job: JobRecord) -> list[dict[str, Any]]:
    """A FedBuff job's failed updates as failure entries (``round``: the client's update number)."""
    return [
        {
            "round": f["update"],
            "shard_id": f["client"],
            "task_type": "train",
            "error": f["error"],
            "source": "worker",
            "version": f["version"],
        }
        for f in fedbuff_view.failed_updates(store, job.job_id)
    ]


def round_rows(
    summaries: list[dict[str, Any]], results: Sequence[ShardResult], job: JobRecord
) -> list[dict[str, Any]]:
    """Finished rounds' stored summaries, plus the running round's summary so far (``partial``)."""
    rows = [{**s, "partial": False} for s in summaries]
    done = {s["round"] for s in summaries}
    if job.status == "RUNNING" and job.round not in done:
        train = [r for r in results if r.round == job.round and r.task_type == "train"]
        if train:
            rows.append({**summarize_round(job.round, train, job.round_started_at), "partial": True})
    return sorted(rows, key=lambda s: s["round"])


def sweep_board(
    job: JobRecord, results: Sequence[ShardResult], copies: Mapping[int, int] | None = None
) -> dict[str, Any] | None:
    """A sweep's leaderboard from its recorded trials (live: it grows as trials finish); ``copies``:
    its trials' losing backup copies' costs (``JobStore.copy_costs``)."""
    if job.kind != "sweep":
        return None
    request = job.request
    if request.objective is None or request.search_space is None:
        return None
    # The manifest's own ranking: grid, list or random trials; with successive halving, the
    # furthest rung first and each trial's rung history.
    section = sweep_section(request, [r for r in results if r.task_type == "train"], copies)
    return {
        "objective": section["objective"],
        "trials": request.task_count,
        "rows": [{"rank": i + 1, **row} for i, row in enumerate(section["leaderboard"])],
    }


def trial_curves(job: JobRecord, results: Sequence[ShardResult]) -> dict[str, Any] | None:
    """A successive-halving sweep charted per trial over its budget: each trial's objective at
    every rung it ran (x = the rung's budget, e.g. epochs), not rung means over the survivors."""
    request = job.request
    es, objective = request.early_stopping, request.objective
    if job.kind != "sweep" or es is None or objective is None:
        return None
    history = rung_history([r for r in results if r.task_type == "train"], request)
    return {
        "metric": objective.metric,
        "direction": objective.direction,
        "budget_param": es.budget_param,
        "x": es.budgets,
        "trials": [
            {"trial": trial, "rung": max(p["rung"] for p in points), "points": points}
            for trial, points in sorted(history.items())
        ],
    }


@dataclass
class DashboardData:
    """Read access for the dashboard.

    Parameters
    ----------
    store:
        The job table.
    sqs, s3:
        boto3 clients (queue depths; result manifests).
    queues:
        Queue name (``tasks``, ``tasks-dlq``, ``results``, ``results-dlq``) → URL; the ones the
        stack does not output are left out.
    clock:
        Seconds since the epoch; injectable for tests.
    stall_after_s:
        Seconds without a recorded outcome before a running job's queues are read to explain a
        stall (the job API's ``stall`` field; ``shardq.core.stall``).

    A refresh of a running job reads its record, the outcomes recorded since the previous refresh
    (``shardq.core.progress_reads.JobOutcomes``) and, when its status or phase changed, its round
    summaries: what it costs does not grow with the job.
    """

    store: JobStore
    sqs: Any
    s3: Any
    queues: dict[str, str]
    clock: Callable[[], float] = time.time
    timeline_limit: int = TIMELINE_LIMIT
    stall_after_s: float = DEFAULT_STALL_AFTER_S
    _cache: OrderedDict[str, tuple[str, dict[str, Any]]] = field(default_factory=OrderedDict, repr=False)
    _outcomes: OrderedDict[str, JobOutcomes] = field(default_factory=OrderedDict, repr=False)
    _stalls: OrderedDict[str, StallWatch] = field(default_factory=OrderedDict, repr=False)
    _summaries: OrderedDict[str, tuple[Any, list[dict[str, Any]]]] = field(
        default_factory=OrderedDict, repr=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_outputs(cls, outputs: dict[str, str], client: Callable[[str], Any]) -> DashboardData:
        """Over the stack's outputs (``JobTableName``, queue URLs), with ``client(service)`` clients."""
        if not outputs.get("JobTableName"):
            raise KeyError("JobTableName")
        queues = {name: outputs[key] for name, key in QUEUE_OUTPUTS.items() if outputs.get(key)}
        return cls(
            store=JobStore(outputs["JobTableName"], client("dynamodb")),
            sqs=client("sqs"),
            s3=client("s3"),
            queues=queues,
        )

    def jobs(
        self, status: str | None = None, kind: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Most recent jobs (newest first), optionally of one status and one kind."""
        found: list[JobRecord] = []
        for s in (status,) if status else STATUSES:
            found.extend(self.store.list_jobs(s, limit=limit))
        if kind:
            found = [j for j in found if j.kind == kind]
        found.sort(key=lambda j: j.created_at, reverse=True)
        now = self.clock()
        return [job_row(j, now) for j in found[:limit]]

    def job(self, job_id: str) -> dict[str, Any]:
        """Everything the job page shows; raises ``JobNotFound``."""
        job = self.store.get_job(job_id)
        detail = self._from_results(job)
        stall = self._stall_watch(job_id).observe(job)
        return {
            "job": {
                **job_row(job, self.clock()),
                "max_failed_shards": job.max_failed_shards,
                "model_uri": job.model_uri,
                "round_started_at": job.round_started_at,
            },
            # Why a running job stands still, or null: the page shows it and withholds its ETA.
            "stall": stall.to_dict() if stall is not None else None,
            # An ended job has nothing outstanding: a result that still arrives is late, uncounted.
            "progress": [
                {**p.to_dict(), "outstanding": 0 if job.terminal else p.outstanding} for p in progress(job)
            ],
            **detail,
        }

    def _from_results(self, job: JobRecord) -> dict[str, Any]:
        """Rounds, timeline, failures and leaderboard: cached until the job record changes."""
        key = _fingerprint(job)
        with self._lock:
            cached = self._cache.get(job.job_id)
        if cached and cached[0] == key:
            return cached[1]
        rows = self._records(job)
        results = [row.result for row in rows]
        t0 = epoch(job.created_at) or self.clock()
        rounds = round_rows(self._round_summaries(job), results, job)
        entries = sorted((timeline_entry(row, t0) for row in rows), key=lambda e: e["end_s"])
        cut = max(0, len(entries) - self.timeline_limit)
        detail: dict[str, Any] = {
            "rounds": rounds,
            "metric_names": sorted({name for r in rounds for name in r.get("metrics", {})}),
            # What each round's reduce reported of the global model: the round's headline.
            "global_metric_names": sorted(
                {name for r in rounds for name in ((r.get("reduce") or {}).get("metrics") or {})}
            ),
            "trial_curves": trial_curves(job, results),
            "timeline": {
                "t0": job.created_at,
                "entries": entries[cut:],
                "truncated": cut,
                "workers": sorted({e["worker_id"] for e in entries[cut:]}),
            },
            "failures": [failure_entry(row) for row in rows if row.result.status == "failed"],
            "leaderboard": sweep_board(
                job, results, self.store.copy_costs(job.job_id) if job.request.asynchronous else None
            ),
            # A FedBuff job: each version's applied and late updates and staleness (as `status`).
            "fedbuff": fedbuff_view.progress(self.store, job),
        }
        if detail["fedbuff"] is not None:  # its failed updates are no round's outcomes
            detail["failures"] = [*fedbuff_failures(self.store, job), *detail["failures"]]
        with self._lock:
            self._cache[job.job_id] = (key, detail)
            self._cache.move_to_end(job.job_id)
            while len(self._cache) > CACHED_JOBS:
                self._cache.popitem(last=False)
        return detail

    def _records(self, job: JobRecord) -> list[ResultRecord]:
        """Every counted outcome of the job: read in full the first time, then only what was
        recorded since the previous refresh (``JobOutcomes``)."""
        return _lru(
            self._outcomes, job.job_id, FOLLOWED_JOBS, self._lock, lambda: JobOutcomes(self.store, job.job_id)
        ).rows(job)

    def _round_summaries(self, job: JobRecord) -> list[dict[str, Any]]:
        """The job's stored round summaries, read again only when a round or phase closed, not on
        every refresh of a running round: each summary write is followed by a move of the job's
        status, round or phase (action before transition), which a refresh sees."""
        moment = (job.status, job.round, job.phase, job.closed_round, job.retry_generation)
        with self._lock:
            cached = self._summaries.get(job.job_id)
        if cached is not None and cached[0] == moment:
            return list(cached[1])
        summaries = self.store.round_summaries(job.job_id)
        with self._lock:
            self._summaries[job.job_id] = (moment, summaries)
            self._summaries.move_to_end(job.job_id)
            while len(self._summaries) > CACHED_JOBS:
                self._summaries.popitem(last=False)
        return list(summaries)

    def _stall_watch(self, job_id: str) -> StallWatch:
        return _lru(
            self._stalls,
            job_id,
            CACHED_JOBS,
            self._lock,
            lambda: StallWatch(self.sqs, self.queues, stall_after_s=self.stall_after_s, clock=self.clock),
        )

    def queue_depths(self) -> list[dict[str, Any]]:
        """Approximate visible, in-flight and delayed messages of each queue the stack outputs."""
        return [
            {"queue": name, "dead_letter": name.endswith("-dlq"), "url": url, **queue_counts(self.sqs, url)}
            for name, url in self.queues.items()
        ]

    def manifest(self, job_id: str) -> dict[str, Any] | None:
        """The job's result manifest from the bucket; None while it has none (or it expired)."""
        uri = self.store.get_job(job_id).result_uri
        if not uri:
            return None
        bucket, key = split_s3(uri)
        try:
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        return dict(json.loads(body))
