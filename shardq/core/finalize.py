"""Finalize: write a job's result manifest, end it once, publish ``Job Finished`` once.

Two finishers may race (the last result and a cancel, or two aggregator invocations): the
transition is a conditional write, so one wins; the manifest is deterministic for a given set
of recorded outcomes, and a loser that overwrote the winner's manifest puts back the one that
matches the job's final status.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shardq.core import planning
from shardq.core.artifacts import put_json
from shardq.core.jobstore import JobRecord, JobStore, ResultRecord
from shardq.core.metrics import weighted_metrics
from shardq.core.search import sweep_section

# A crashed event publisher's claim is taken over after this long.
EVENT_CLAIM_LEASE_S = 60.0
MANIFEST_SCHEMA_VERSION = 1

MetricSink = Callable[[str, float, str], None]


def round_seconds(job: JobRecord, now: float) -> float | None:
    """Seconds since the job's current round started (None when it has no start time)."""
    if not job.round_started_at:
        return None
    begun = datetime.fromisoformat(job.round_started_at.replace("Z", "+00:00")).timestamp()
    return max(0.0, now - begun)


def _failures(rows: list[ResultRecord]) -> list[dict[str, Any]]:
    return [
        {
            "round": row.result.round,
            "shard_id": row.result.shard_id,
            "task_type": row.result.task_type,
            "error": row.result.error,
            "source": row.source,
            "receive_count": row.receive_count,
        }
        for row in rows
        if row.result.status == "failed"
    ]


def _kind_section(job: JobRecord, status: str, rows: list[ResultRecord]) -> dict[str, Any]:
    """What the manifest says about the job's output, by kind."""
    request = job.request
    train = [row.result for row in rows if row.result.task_type == "train"]
    if request.kind == "data_parallel":
        return {"final_model_uri": job.model_uri if status == "SUCCEEDED" else None}
    if request.kind == "sweep":
        return sweep_section(request, train)
    outputs = [
        {
            "shard_id": r.shard_id,
            "artifact_uri": r.artifact_uri,
            "num_samples": r.num_samples,
            "metrics": r.metrics,
        }
        for r in sorted(train, key=lambda r: r.shard_id)
        if r.status == "succeeded"
    ]
    return {"outputs": outputs, "metrics": weighted_metrics(train)}


def render_manifest(
    job: JobRecord, status: str, error: str | None, rows: list[ResultRecord], rounds: list[dict[str, Any]]
) -> dict[str, Any]:
    """The result manifest: deterministic for a given set of recorded outcomes."""
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "job_id": job.job_id,
        "kind": job.kind,
        "status": status,
        "error": error,
        "created_at": job.created_at,
        # Latest recording time, not "now": two racing finalizers write the same manifest.
        "finished_at": max((row.recorded_at for row in rows), default=job.created_at),
        "rounds": rounds,
        "failed": _failures(rows),
        "request": job.request.to_dict(),
        **_kind_section(job, status, rows),
    }


@dataclass
class Finisher:
    """Ends jobs: manifest, the one transition to a terminal status, the event.

    Parameters
    ----------
    store, s3, events:
        The job store and boto3 S3 and EventBridge clients.
    bucket, event_bus_name, job_ttl_days:
        From the stack's settings.
    metric, clock:
        Business-metric sink and wall clock (seconds since the epoch).
    """

    store: JobStore
    s3: Any
    events: Any
    bucket: str
    event_bus_name: str
    job_ttl_days: int
    metric: MetricSink
    clock: Callable[[], float]

    def manifest(self, job: JobRecord, status: str, error: str | None) -> dict[str, Any]:
        """The job's manifest as of its recorded outcomes."""
        rows = self.store.all_results(job.job_id)
        return render_manifest(job, status, error, rows, self.store.round_summaries(job.job_id))

    def finalize(self, job: JobRecord, status: str, error: str | None = None) -> str:
        """Write the result manifest, move the job to ``status`` once, publish the event once."""
        layout = planning.Layout(self.bucket, job.job_id)
        manifest = self.manifest(job, status, error)
        put_json(self.s3, self.bucket, layout.manifest_key(), manifest)
        expires = datetime.now(UTC) + timedelta(days=self.job_ttl_days)
        won = self.store.finish(
            job.job_id,
            status,
            finished_at=manifest["finished_at"],
            result_uri=f"s3://{layout.bucket}/{layout.manifest_key()}",
            error=error,
            expires_at=int(expires.timestamp()),
        )
        if won:
            self.metric("JobsFinished", 1, "Count")
            self.round_finished(job)
        # Winner or not, make sure the event went out (the winner may have crashed before it).
        current = self.store.get_job(job.job_id)
        if not won and current.status != status:
            # Lost to another ending (a cancel racing the last result): our manifest may have
            # overwritten the winner's, so put back the one that matches the job's status.
            put_json(
                self.s3,
                self.bucket,
                layout.manifest_key(),
                self.manifest(current, current.status, current.error),
            )
        if current.event_pending:
            self.publish_finished(current)
        return current.status

    def round_finished(self, job: JobRecord) -> None:
        """Report the current round's duration."""
        seconds = round_seconds(job, self.clock())
        if seconds is not None:
            self.metric("RoundDuration", seconds, "Seconds")

    def publish_finished(self, job: JobRecord) -> None:
        """Publish ``Job Finished`` once: claim it, send it, then clear the pending flag.

        The claim is a lease: if its holder dies before clearing the flag, a later
        ``advance`` (driven by the redelivered batch) takes the claim over and sends it.
        """
        if not self.store.claim_event(job.job_id, self.clock(), EVENT_CLAIM_LEASE_S):
            return  # someone else holds (or already sent) it
        detail = {
            "job_id": job.job_id,
            "kind": job.kind,
            "status": job.status,
            "result_uri": job.result_uri,
            "error": job.error,
        }
        try:
            resp = self.events.put_events(
                Entries=[
                    {
                        "Source": "shardq",
                        "DetailType": "Job Finished",
                        "Detail": json.dumps(detail),
                        "EventBusName": self.event_bus_name,
                    }
                ]
            )
            if resp.get("FailedEntryCount"):
                raise RuntimeError(f"EventBridge refused the Job Finished event: {resp.get('Entries')}")
        except Exception:
            # Give the claim back so the retry that follows can send it at once.
            self.store.release_event_claim(job.job_id)
            raise
        self.store.event_sent(job.job_id)
