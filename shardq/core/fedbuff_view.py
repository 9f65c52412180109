"""What the read commands show of a FedBuff job: versions made, the open buffer, updates applied /
late / failed in all and per version, and each version's staleness (mean and histogram).

Read from the job's FedBuff counts and its versions' round summaries (``fedbuff.version_summary``);
``shardq status`` (human and ``--json``) shows it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from shardq.core import fedbuff
from shardq.core.fedbuff_params import averages, cached_calibration, server_lr_at, weighs_cache
from shardq.core.jobstore import JobRecord, JobStore
from shardq.core.store.fedbuff import FAILED, FedBuffStore

# Failed updates ``progress`` lists (the first ones, in recording order); the count is in full.
FAILED_SHOWN = 20


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


def live(job: JobRecord) -> dict[str, Any] | None:
    """The job's FedBuff progress from its record alone (what ``watch`` and the dashboard's job list
    poll): versions made of R, the open buffer's applied updates of K, updates applied, late and
    failed in all, and the applied updates' mean staleness. None for any other job."""
    if not fedbuff.applies(job.request):
        return None
    k = int(job.request.strategy.params["buffer_size"]) if job.request.strategy else 1

    def total(kind: str) -> int:  # over the versions (surplus updates, past the last one, left out)
        return sum(n for (name, v, phase), n in job.counters.items() if name == kind and v < job.rounds)

    made = closed(job) if job.status == "SUCCEEDED" else job.round
    open_ = job.round if job.phase == "train" and not job.terminal else None
    fill = 0
    if open_ is not None:
        fill = job.counters.get(("upd", open_, "train"), 0) - job.counters.get(("ulate", open_, "train"), 0)
    applied = total("upd") - total("ulate")
    return {
        "versions_made": made,
        "versions": job.rounds,
        "buffer_fill": min(fill, k),
        "buffer_size": k,
        "updates_applied": applied,
        "updates_late": total("ulate"),
        "updates_failed": total("ufail"),
        "mean_staleness": round(total("utau") / applied, 3) if applied else 0.0,
    }


def line(data: dict[str, Any] | None) -> str | None:
    """``live``'s numbers in words (``watch``'s progress line, the dashboard's job page)."""
    if data is None:
        return None
    return (
        f"version {data['versions_made']}/{data['versions']} · buffer {data['buffer_fill']}/"
        f"{data['buffer_size']} · {data['updates_applied']} applied, {data['updates_late']} late "
        f"· mean staleness {data['mean_staleness']:.2f}"
    )


def progress(store: JobStore, job: JobRecord) -> dict[str, Any] | None:
    """``live``, plus the server step's calibration, the clients waiting for the next version, each
    version's accounting (its round summary: applied, late, staleness histogram and mean, the global
    model's metrics) and the failed updates with their errors (None for any other job)."""
    data = live(job)
    if data is None:
        return None
    fb = FedBuffStore(store)
    params = job.request.strategy.params if job.request.strategy else {}
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
                # the step size that made version + 1 (server_lr_schedule; what its reduce got)
                "server_lr": server_lr_at(params, int(summary["version"]), job.rounds),
                "global_metrics": (summary.get("reduce") or {}).get("metrics", {}),
            }
        )
    return {
        **data,
        # the server step's calibration: "none" (FedBuff) or "cached" (CA2FL, fedbuff_calibration),
        # and how a calibrated step weighs the cached mean: "staleness" (by s(τ)) or "full" (1)
        "calibration": params.get("calibration", "none"),
        "cache_weight": ("staleness" if weighs_cache(params) else "full")
        if cached_calibration(params)
        else None,
        # the server step size over the job: "constant", or decaying from server_lr to
        # server_lr × server_lr_floor at the last version ("cosine", "linear")
        "server_lr": float(params.get("server_lr", 1.0)),
        "server_lr_schedule": params.get("server_lr_schedule", "constant"),
        "server_lr_floor": float(params["server_lr_floor"])
        if params.get("server_lr_schedule", "constant") != "constant"
        else None,
        # the model the job returns and each version's metrics score: "none" (the last version),
        # "ema" or "polynomial" (an average of the versions, kept beside each: fedbuff_params.average_uri)
        "model_average": str(params.get("model_average", "none")) if averages(params) else "none",
        "ema_decay": float(params["ema_decay"]) if "ema_decay" in params and averages(params) else None,
        "average_eta": float(params["average_eta"]) if "average_eta" in params and averages(params) else None,
        "clients_waiting": len(fb.counts(job.job_id).waiting),
        "per_version": versions,
        "failed_updates": failed_updates(store, job.job_id)[:FAILED_SHOWN] if data["updates_failed"] else [],
    }


def failed_updates(store: JobStore, job_id: str) -> list[dict[str, Any]]:
    """The job's failed updates in the order they were recorded: client, update number, the version
    open then, and the error (``status``, ``watch`` and the dashboard list them)."""
    failed = sorted(
        (u for u in FedBuffStore(store).all_updates(job_id) if u.state == FAILED), key=lambda u: u.order
    )
    return [
        {"client": u.client, "update": u.seq, "version": u.version, "error": u.error or "(no error text)"}
        for u in failed
    ]


def text(data: dict[str, Any] | None) -> str:
    """The human lines of ``progress`` (empty for other jobs)."""
    if data is None:
        return ""
    lines = [
        "",
        f"FedBuff: {data['versions_made']}/{data['versions']} versions made; buffer "
        f"{data['buffer_fill']}/{data['buffer_size']}; updates {data['updates_applied']} applied, "
        f"{data['updates_late']} late, {data['updates_failed']} failed"
        + (
            f"; cached update calibration (CA2FL, cached mean weighted "
            f"{'by s(τ)' if data.get('cache_weight') == 'staleness' else 'fully'})"
            if data.get("calibration") == "cached"
            else ""
        )
        + (
            f"; server lr {data['server_lr']:g} → {data['server_lr'] * data['server_lr_floor']:g} "
            f"({data['server_lr_schedule']} over {data['versions']} versions)"
            if data.get("server_lr_schedule", "constant") != "constant"
            else ""
        )
        + (
            f"; the job's model: the versions' moving average (decay {data['ema_decay']:g}), which "
            "each version's metrics score"
            if data.get("model_average") == "ema"
            else ""
        )
        + (
            f"; the job's model: the versions' polynomial-decay average (η {data['average_eta']:g}: "
            f"mean age 1/{data['average_eta'] + 2:g} of them), which each version's metrics score"
            if data.get("model_average") == "polynomial"
            else ""
        ),
        f"{'VERSION':>7}  {'APPLIED':>7}  {'LATE':>4}  {'MEAN τ':>6}  STALENESS (τ: updates)",
    ]
    for v in data["per_version"]:
        histogram = " ".join(
            f"{t}:{n}" for t, n in sorted(v["staleness_histogram"].items(), key=lambda x: int(x[0]))
        )
        lines.append(
            f"{v['version']:>7}  {v['applied']:>7}  {v['late']:>4}  {v['mean_staleness']:>6.2f}  {histogram}"
        )
    for f in data["failed_updates"]:
        reason = f["error"].strip().splitlines()[0][:200] if f["error"].strip() else "(no error text)"
        lines.append(
            f"failed: update {f['update']} of client {f['client']} (version {f['version']}): {reason}"
        )
    return "\n".join(lines)


def manifest_section(store: JobStore, job: JobRecord, status: str) -> dict[str, Any]:
    """The result manifest's ``fedbuff`` section as the job ends with ``status`` (``progress`` of the
    ended job: every version's accounting and every failed update); empty for any other job."""
    data = progress(store, replace(job, status=status))
    if data is None:
        return {}
    failed = failed_updates(store, job.job_id) if data["updates_failed"] else []
    section = {**data, "failed_updates": failed}
    if data["model_average"] != "none":  # the job's model is the average; the last version's own model
        last = store.round_summaries(job.job_id)[-1:] if data["versions_made"] else []
        section["last_version_model_uri"] = next(
            ((s.get("reduce") or {}).get("model_uri") for s in last), None
        )
    return {"fedbuff": section}
