"""The ``result`` command: a finished job's manifest (metrics, leaderboard, rungs, outputs, --plot)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from shardq.cli.common import (
    EXIT_OK,
    CliError,
    NotFoundError,
    Painted,
    aws_errors,
    engine_for,
    fields,
    get_job,
    paint,
    paint_status,
    print_json,
    table,
)
from shardq.cli.status import global_metrics, late_text, number_text, policy_fields
from shardq.core.budgets import cost_text, manifest_cost
from shardq.core.planning import split_s3

if TYPE_CHECKING:
    pass


def read_manifest(args: argparse.Namespace, engine: Any, job_id: str) -> dict[str, Any]:
    """The job's result manifest; NotFoundError while it has none."""
    job = get_job(engine, job_id)
    uri = job.result_uri
    if not uri:
        raise NotFoundError(
            f"job {job_id} is {job.status} and has no result yet; follow it with `shardq watch {job_id}`"
        )
    bucket, key = split_s3(uri)
    try:
        body = engine.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except engine.s3.exceptions.NoSuchKey:
        raise NotFoundError(
            f"the result manifest {uri} is gone (lifecycle expiry?); nothing to show"
        ) from None
    return dict(json.loads(body))


def render_manifest(m: dict[str, Any], out: IO[str], *, late: int = 0) -> str:
    """The human view of a manifest: status, round policy, per-round metrics, the kind's section, failures.

    ``late``: results kept apart after their round closed or the job ended (the manifest was
    written before they came, so it does not list them; ``status`` reads the same count)."""
    parts = [
        fields(
            [
                ("job", m["job_id"]),
                ("status", paint_status(m["status"], out)),
                ("kind", m["kind"]),
                *policy_fields(m.get("request") or {}),
                ("created", m.get("created_at")),
                ("finished", m.get("finished_at")),
                ("late", paint(late_text(late, ended=True) or "", "yellow", out)),
                ("code", ", ".join(m.get("code_versions") or [])),
                ("cost", manifest_cost(m)),
                ("error", m.get("error")),
                ("final model", m.get("final_model_uri")),
            ],
            out,
        )
    ]
    parts.extend(_rounds_section(m, out))
    if m["kind"] == "sweep":
        parts.extend(_sweep_section(m, out))
    elif m["kind"] == "map":
        parts.extend(_map_section(m, out))
    failed = m.get("failed") or []
    if failed:
        rows = [
            (
                f["round"] + 1,
                f["shard_id"],
                f["task_type"],
                f.get("source"),
                Painted(str(f.get("error")), "red"),
            )
            for f in failed[:20]
        ]
        title = f"failed tasks ({len(failed)})"
        parts.append(table(rows, ("ROUND", "SHARD", "TYPE", "SOURCE", "ERROR"), out, title=title))
    return "\n\n".join(parts)


def _rounds_section(m: dict[str, Any], out: IO[str]) -> list[str]:
    """Per round: the global model's metrics first (what a reduce reported), then the shards'
    weighted means; a successive-halving sweep's rounds are its rungs, with their budgets."""
    rounds = sorted(m.get("rounds") or [], key=lambda r: int(r["round"]))
    if not rounds:
        return []
    # Sweep trials that diverged (``shards_diverged``, only where some did): a column of their own.
    div = ("DIVERGED",) if any(r.get("shards_diverged") for r in rounds) else ()

    def diverged(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r.get("shards_diverged", 0),) if div else ()

    halving = m.get("early_stopping")
    if halving:
        budgets, param = halving["budgets"], halving.get("budget_param", "budget")
        rows = [
            (
                r["round"] + 1,
                budgets[r["round"]] if r["round"] < len(budgets) else "",
                r.get("shards_succeeded", 0) + r.get("shards_failed", 0) + r.get("shards_diverged", 0),
                r.get("shards_succeeded"),
                r.get("shards_failed"),
                *diverged(r),
            )
            for r in rounds
        ]
        return [table(rows, ("RUNG", param.upper(), "TRIALS", "OK", "FAILED", *div), out, title="rungs")]
    model = sorted({n for r in rounds for n in global_metrics(r)})
    names = sorted({n for r in rounds for n in r.get("metrics", {})})
    rows = [
        (
            r["round"] + 1,
            r.get("shards_succeeded"),
            r.get("shards_failed"),
            *diverged(r),
            r.get("num_samples"),
            *(number_text(global_metrics(r)[n]) if n in global_metrics(r) else "" for n in model),
            *(number_text(r["metrics"][n]["mean"]) if n in r.get("metrics", {}) else "" for n in names),
        )
        for r in rounds
    ]
    title = "per round: the global model's metrics, then the shards' weighted means" if model else None
    headers = ("ROUND", "OK", "FAILED", *div, "SAMPLES", *(f"global {n}" for n in model), *names)
    return [table(rows, headers, out, title=title)]


def _sweep_section(m: dict[str, Any], out: IO[str]) -> list[str]:
    """A sweep's best trial and leaderboard (top 10)."""
    objective = m.get("objective", {})
    board = m.get("leaderboard") or []
    parts = []
    halving = m.get("early_stopping")
    budgets = halving["budgets"] if halving else []
    param = halving.get("budget_param", "budget") if halving else ""

    def reached(row: dict[str, Any]) -> tuple[Any, ...]:
        rung = int(row.get("rung", 0))
        return (rung + 1, budgets[rung] if rung < len(budgets) else "") if halving else ()

    if m.get("best"):
        best = m["best"]
        at = f" at rung {reached(best)[0]} ({param} {reached(best)[1]})" if halving else ""
        parts.append(
            f"best trial {best['trial']}: {objective.get('metric')} = {best['objective']} "
            f"({objective.get('direction')}){at} with {json.dumps(best['hyperparameters'], sort_keys=True)}\n"
            f"  artifact: {best.get('artifact_uri')}"
        )
    if halving:
        spent, whole = halving.get("budget_spent"), halving.get("budget_without_stopping")
        saved = f", {100 * (1 - spent / whole):.3g}% saved" if spent is not None and whole else ""
        # Which ASHA rule promoted (``shardq.core.asha_rules``), for an asynchronous sweep.
        rule = f" (ASHA, {halving['promotion']} promotion)" if halving.get("promotion") else ""
        parts.append(f"budget spent: {spent} of {whole} {param} without early stopping{saved}{rule}")
    if board:
        # Each trial's cost over its rungs, when its workers were priced (shardq.core.spend).
        priced = any(b.get("cost_usd") for b in board)
        rows = [
            (
                i + 1,
                b["trial"],
                *reached(b),
                # A diverged trial (a non-finite metric) has no objective: it ranks last (issue #22).
                "diverged" if b.get("outcome") == "diverged" else b["objective"],
                json.dumps(b["hyperparameters"], sort_keys=True),
                *((cost_text(b.get("cost_usd") or 0.0),) if priced else ()),
                b.get("artifact_uri"),
            )
            for i, b in enumerate(board[:10])
        ]
        headers = (
            "RANK",
            "TRIAL",
            *(("RUNG", param.upper()) if halving else ()),
            objective.get("metric", "objective").upper(),
            "HYPERPARAMETERS",
            *(("COST",) if priced else ()),
            "ARTIFACT",
        )
        title = f"leaderboard (top {min(10, len(board))} of {len(board)})"
        parts.append(table(rows, headers, out, title=title))
    return parts


def _map_section(m: dict[str, Any], out: IO[str]) -> list[str]:
    """A map job's metrics over its shards and its outputs (first 20)."""
    outputs = m.get("outputs") or []
    metrics = m.get("metrics") or {}
    parts = []
    if metrics:
        summary = [(n, *(number_text(v[k]) for k in ("mean", "min", "max"))) for n, v in metrics.items()]
        parts.append(table(summary, ("METRIC", "MEAN", "MIN", "MAX"), out))
    # An ATTEMPTS column only where a task needed more than one (a preemption, a retry): "2, from
    # step 1200" when its last attempt resumed from a checkpoint.
    retried = any(o.get("attempt", 1) > 1 for o in outputs[:20])
    rows = [
        (o["shard_id"], o.get("num_samples"), *((attempt_cell(o),) if retried else ()), o.get("artifact_uri"))
        for o in outputs[:20]
    ]
    # Manifest schema 2 keeps the first entries inline and the whole list in JSON Lines parts.
    total = int(m.get("outputs_count", len(outputs)))
    if rows:
        more = f" (first 20 of {total}; --json for the manifest)" if total > 20 else ""
        head = ("SHARD", "SAMPLES", *(("ATTEMPTS",) if retried else ()), "ARTIFACT")
        parts.append(table(rows, head, out, title=f"outputs{more}"))
    if m.get("outputs_parts"):
        # Each part is ``{"uri", "count", "bytes", "first_shard", "last_shard"}`` (finalize.PartWriter).
        uris = [str(p["uri"]) if isinstance(p, dict) else str(p) for p in m["outputs_parts"]]
        parts.append(f"all {total} outputs, as JSON Lines in {len(uris)} part(s): " + " ".join(uris))
    return parts


def attempt_cell(output: dict[str, Any]) -> str:
    """``2, from step 1200``: how many attempts a task took and where its last one resumed."""
    step = output.get("resume_step")
    return f"{output.get('attempt', 1)}" + (f", from step {step}" if step is not None else "")


def model_uri(manifest: dict[str, Any]) -> str | None:
    """The model worth downloading: the final model, or the best trial's artifact."""
    if manifest["kind"] == "data_parallel":
        return manifest.get("final_model_uri")
    if manifest["kind"] == "sweep" and manifest.get("best"):
        return str(manifest["best"].get("artifact_uri") or "") or None
    return None


def download(s3: Any, uri: str, target: Path) -> list[Path]:
    """Download an object, or every object under a prefix (URI ending in ``/``), into ``target``."""
    bucket, key = split_s3(uri)
    target.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    if key.endswith("/") or not key:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            keys.extend(o["Key"] for o in page.get("Contents", []))
    else:
        keys.append(key)
    saved = []
    for k in keys:
        rel = k[len(key) :] if key.endswith("/") else Path(k).name
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, k, str(path))
        saved.append(path)
    return saved


def cmd_result(args: argparse.Namespace) -> int:
    """Print a finished job's result manifest; download its model with ``--download DIR``."""
    engine = engine_for(args)
    with aws_errors(args):
        manifest = read_manifest(args, engine, args.job)
        if args.json:
            print_json(manifest)
        else:
            late = len(engine.store.late_results(args.job))
            print(render_manifest(manifest, sys.stdout, late=late))
        if args.download:
            target = Path(args.download)
            target.mkdir(parents=True, exist_ok=True)
            (target / "result.json").write_text(
                json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8"
            )
            uri = model_uri(manifest)
            saved = download(engine.s3, uri, target) if uri else []
            what = f"{len(saved)} model file(s) from {uri}" if uri else "no model (this job has none)"
            print(f"saved result.json and {what} to {target}", file=sys.stderr)
        if args.plot:
            from shardq.dashboard.plot import PlotError, plot_manifest

            try:
                print(f"wrote the metric curves to {plot_manifest(manifest, args.plot)}", file=sys.stderr)
            except PlotError as exc:
                raise CliError(str(exc)) from None
    return EXIT_OK
