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
