"""The in-process engine over real local-cloud resources, with in-process worker threads.

``LocalRun`` provisions one fresh set of the stack's stateful resources in a running
``LocalCloud`` (FIFO task queue, results queue, job table, bucket: the same ones the tests
use), builds the ``Engine`` the Lambdas wrap, and starts ``workers`` threads, each a real
``shardq.worker.runtime.Worker`` with its own boto3 clients polling the task queue. ``run``
submits a request and pumps the results queue into ``Engine.ingest`` (what the aggregator's
event source mapping does, round deadlines' ticks included) until the job ends, timing each
step on the wall clock.

Every loop is bounded by a timeout; worker threads stop on an event and are joined.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks._common import WORKER_START_TIMEOUT_S, load
from shardq.core.advance import results_message
from shardq.core.contracts import TERMINAL_STATUSES
from shardq.core.engine import Engine
from shardq.core.jobstore import JobRecord, Outcome
from shardq.core.planning import split_s3
from shardq.core.settings import Settings
from shardq.local.cloud import LocalCloud
from shardq.local.resources import provision
from shardq.worker.runtime import Worker
from shardq.worker.trust import AllowList


@dataclass
class Timeline:
    """What one job did, in seconds after its submission (wall clock)."""

    job_id: str
    status: str = "RUNNING"
    round_closed_s: dict[int, float] = field(default_factory=dict)
    finished_s: float | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    late: int = 0
    manifest: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class LocalRun:
    """One isolated set of local-cloud resources, its engine and ``workers`` worker threads."""

    def __init__(self, cloud: LocalCloud, workers: int, *, wait_s: int = 1, job_checks: bool = False) -> None:
        self.cloud = cloud
        # ``job_checks``: the workers read the job table before each task, as ``shardq worker`` does
        # (``shardq.worker.drops``: a cancelled or finished job's task, or a backup copy whose task
        # is answered, is deleted unrun), at one GetItem a task; off, they run whatever they receive.
        self.job_checks = job_checks
        self.sqs, self.s3 = cloud.client("sqs"), cloud.client("s3")
        self.settings: Settings = provision(self.sqs, cloud.client("dynamodb"), self.s3)
        self.engine = Engine(
            settings=self.settings,
            ddb=cloud.client("dynamodb"),
            sqs=self.sqs,
            s3=self.s3,
            events=cloud.client("events"),
        )
        self.stop = threading.Event()
        self.ready = threading.Semaphore(0)
        self.log_level = logging.NOTSET
        self.threads = [
            threading.Thread(target=self._work, args=(i, wait_s), name=f"bench-worker-{i}", daemon=True)
            for i in range(workers)
        ]

    def _work(self, index: int, wait_s: int) -> None:
        worker = Worker(
            allow=AllowList.parse("benchmarks.*,examples.*"),  # the workloads and the sweeps' linear model
            sqs=self.cloud.client("sqs"),
            s3=self.cloud.client("s3"),
            task_queue_url=self.settings.task_queue_url,
            results_queue_url=self.settings.results_queue_url,
            worker_id=f"bench-{index}",
            wait_s=wait_s,
            ddb=self.cloud.client("dynamodb") if self.job_checks else None,
            job_table=self.settings.job_table if self.job_checks else None,
        )
        self.ready.release()
        worker.run(self.stop)

    def __enter__(self) -> LocalRun:
        # The workers log a line per task; the benchmark prints its own summary instead (the
        # level is put back on close: in a test session other tests read those lines).
        self.log_level = logging.getLogger("shardq").level
        logging.getLogger("shardq").setLevel(logging.WARNING)
        for t in self.threads:
            t.start()
        # Submit only once every worker is built (clients made, queue attributes read) and polling:
        # the figures are then the round's, not the threads' start-up.
        end = time.monotonic() + WORKER_START_TIMEOUT_S
        for n in range(len(self.threads)):
            if not self.ready.acquire(timeout=max(0.1, end - time.monotonic())):
                self.close(timeout=10)
                dead = sum(not t.is_alive() for t in self.threads)
                raise TimeoutError(
                    f"{len(self.threads) - n} of {len(self.threads)} worker threads did not start within "
                    f"{WORKER_START_TIMEOUT_S:.0f} s ({load()}; {dead} ended, see the log above)"
                )
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(timeout=60.0)

    def close(self, timeout: float) -> None:
        """Stop the worker threads (each ends its current task first) and join them."""
        self.stop.set()
        end = time.monotonic() + timeout
        for t in self.threads:
            t.join(timeout=max(0.1, end - time.monotonic()))
        logging.getLogger("shardq").setLevel(self.log_level)

    def run(self, payload: dict[str, Any], *, timeout: float, train_results: int = 0) -> Timeline:
        """Submit ``payload`` and pump its results until it ends and ``train_results`` training
        results arrived (so a straggler's late result is seen, not left running).

        Raises ``TimeoutError`` when the job is still running after ``timeout`` seconds, and
        ``RuntimeError`` when the engine refuses a result (a miscount is a failed benchmark).
        """
        started = time.monotonic()
        answer = self.engine.submit(payload)
        line = Timeline(job_id=answer["job_id"])
        end = started + timeout
        while time.monotonic() < end:
            self._pump(line, started)
            job = self.engine.store.get_job(line.job_id)
            self._note(line, job, time.monotonic() - started)
            line.late = len(self.engine.store.late_results(line.job_id))
            arrived = sum(1 for r in line.results if r["task_type"] == "train")
            if job.status in TERMINAL_STATUSES and arrived >= train_results:
                line.status, line.error = job.status, job.error
                line.manifest = self._manifest(job)
                return line
        raise TimeoutError(
            f"job {line.job_id} did not end (with {train_results} training results) within {timeout} s"
        )

    def _pump(self, line: Timeline, started: float) -> None:
        """One receive from the results queue into ``Engine.ingest``; delete what it took."""
        msgs = self.sqs.receive_message(
            QueueUrl=self.settings.results_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", [])
        if not msgs:
            return
        items = [results_message(m["Body"]) for m in msgs]
        failures = self.engine.ingest(items)
        if failures:
            raise RuntimeError(f"the engine refused {len(failures)} results: {failures[0][1]}")
        now = time.monotonic() - started
        for item in items:
            if isinstance(item, Outcome):
                r = item.result
                line.results.append(
                    {"round": r.round, "shard_id": r.shard_id, "task_type": r.task_type, "status": r.status,
                     "duration_s": r.duration_s, "ingested_s": round(now, 3)}
                )  # fmt: skip
        self.sqs.delete_message_batch(  # at most 10: one receive's worth
            QueueUrl=self.settings.results_queue_url,
            Entries=[{"Id": str(j), "ReceiptHandle": m["ReceiptHandle"]} for j, m in enumerate(msgs)],
        )

    @staticmethod
    def _note(line: Timeline, job: JobRecord, now: float) -> None:
        """Record when each round's train phase closed and when the job ended."""
        for r in range(job.round + 1):
            closed = r < job.round or job.phase != "train" or job.closed_round == r
            if closed or job.status in TERMINAL_STATUSES:
                line.round_closed_s.setdefault(r, round(now, 3))
        if job.status in TERMINAL_STATUSES and line.finished_s is None:
            line.finished_s = round(now, 3)

    def _manifest(self, job: JobRecord) -> dict[str, Any]:
        if not job.result_uri:
            return {}
        bucket, key = split_s3(job.result_uri)
        manifest: dict[str, Any] = json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        return manifest
