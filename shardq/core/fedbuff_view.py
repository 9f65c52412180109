"""What the read commands show of a FedBuff job: versions made, the open buffer, updates applied /
late / failed in all and per version, and each version's staleness (mean and histogram).

Read from the job's FedBuff counts and its versions' round summaries (``fedbuff.version_summary``);
``shardq status`` (human and ``--json``) shows it.
"""

from __future__ import annotations

from typing import Any

from shardq.core import fedbuff
from shardq.core.jobstore import JobRecord, JobStore
from shardq.core.store.fedbuff import FedBuffStore


def closed(job: JobRecord) -> int:
    """Versions whose buffer closed (their reduce sent or done)."""
    return job.round + (1 if job.phase == "reduce" or job.status == "SUCCEEDED" else 0)


def phase_rows(job: JobRecord) -> list[dict[str, Any]]:
    """``operations.progress``'s rows of a FedBuff job, one (version, phase) each: a version's
    ``train`` row counts the updates that went into it (``done``: trained, applied or late) and
    failed while it was open; its total is what it ended with, or, while it fills, what it has
    plus the applied updates its buffer still needs. Its ``reduce`` row is the server step."""
    k = int(job.request.strategy.params["buffer_size"]) if job.request.strategy else 1
    rows: list[dict[str, Any]] = []
    for v in range(job.round + 1):
        done, failed = job.counters.get(("upd", v, "train"), 0), job.counters.get(("ufail", v, "train"), 0)
        applied = done - job.counters.get(("ulate", v, "train"), 0)
        still = 0 if v < closed(job) or job.terminal else max(0, k - applied)
        rows.append(
            {
                "round": v,
                "phase": "train",
                "total": done + failed + still,
                "enqueued": done + failed + still,
                "done": done,
                "failed": failed,
                "diverged": 0,
                "cost_usd": job.counters.get(("usd", v, "train"), 0) / 1_000_000,
            }
        )
        if v < job.round or job.phase == "reduce":
            rows.append(
                {
                    "round": v,
                    "phase": "reduce",
                    "total": 1,
                    "enqueued": job.enqueued(v, "reduce"),
                    "done": job.ok(v, "reduce"),
                    "failed": job.failed(v, "reduce"),
                    "diverged": 0,
                    "cost_usd": job.counters.get(("usd", v, "reduce"), 0) / 1_000_000,
                }
            )
    return rows


def tasks_left(job: JobRecord) -> int:
    """Outcomes still to come at least: the open buffer's missing applied updates, its reduce,
    and K updates and a reduce per version still to make (late or failed updates add to it)."""
    if job.terminal:
        return 0
    k = int(job.request.strategy.params["buffer_size"]) if job.request.strategy else 1
    rows = phase_rows(job)
    current = rows[-1]
    left = current["total"] - current["done"] - current["failed"]
    if current["phase"] == "train":
        left += 1  # its reduce
    return left + (job.rounds - job.round - 1) * (k + 1)


def progress(store: JobStore, job: JobRecord) -> dict[str, Any] | None:
    """The job's FedBuff progress (None for any other job)."""
    if not fedbuff.applies(job.request):
        return None
    assert job.request.strategy is not None
    counts = FedBuffStore(store).counts(job.job_id)
    versions = []
    for summary in store.round_summaries(job.job_id):
        part = summary.get("fedbuff")
        if part is None:
            continue
        versions.append(
            {
                "version": summary["version"],
                "applied": part["applied"],
                "late": part["late"],
                "mean_staleness": part["mean_staleness"],
                "staleness_histogram": part["staleness_histogram"],
                "global_metrics": (summary.get("reduce") or {}).get("metrics", {}),
            }
        )
    made = job.round + (1 if job.status == "SUCCEEDED" else 0)
    return {
        "versions_made": made,
        "versions": job.rounds,
        "buffer_size": int(job.request.strategy.params["buffer_size"]),
        "buffer_fill": counts.fill if counts.open < job.rounds else 0,
        "updates_applied": counts.applied,
        "updates_late": counts.late,
        "updates_failed": counts.failed,
        "clients_waiting": len(counts.waiting),
        "per_version": versions,
    }


def text(data: dict[str, Any] | None) -> str:
    """The human lines of ``progress`` (empty for other jobs)."""
    if data is None:
        return ""
    lines = [
        "",
        f"FedBuff: {data['versions_made']}/{data['versions']} versions made; buffer "
        f"{data['buffer_fill']}/{data['buffer_size']}; updates {data['updates_applied']} applied, "
        f"{data['updates_late']} late, {data['updates_failed']} failed",
        f"{'VERSION':>7}  {'APPLIED':>7}  {'LATE':>4}  {'MEAN τ':>6}  STALENESS (τ: updates)",
    ]
    for v in data["per_version"]:
        histogram = " ".join(
            f"{t}:{n}" for t, n in sorted(v["staleness_histogram"].items(), key=lambda x: int(x[0]))
        )
        lines.append(
            f"{v['version']:>7}  {v['applied']:>7}  {v['late']:>4}  {v['mean_staleness']:>6.2f}  {histogram}"
        )
    return "\n".join(lines)
