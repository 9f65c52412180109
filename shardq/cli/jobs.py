"""Job commands: ``submit``, ``status``, ``list``, ``watch``, ``result``, ``cancel``, ``retry``.

Reads go straight to the job table and the artifact bucket the stack's outputs name; a
submit invokes the splitter Lambda (the same path as ``aws lambda invoke``), so the CLI
never needs more than the permissions an operator has anyway.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from shardq.cli.common import (
    EXIT_JOB_FAILED,
    EXIT_OK,
    AwsError,
    CliError,
    NotFoundError,
    Painted,
    add_command,
    aws_errors,
    duration,
    engine_for,
    fields,
    get_job,
    paint,
    paint_status,
    print_json,
    require_output,
    session_client,
    stack_outputs,
    status_cell,
    table,
    use_colour,
)
from shardq.core.contracts import JOB_STATUSES
from shardq.core.planning import split_s3

if TYPE_CHECKING:
    from shardq.core.jobstore import JobRecord
    from shardq.core.operations import PhaseProgress

STATUSES = JOB_STATUSES
# Throughput is measured over this trailing window, so the ETA follows the current pace.
RATE_WINDOW_S = 30.0


# -- submit ---------------------------------------------------------------------------------


def load_request(path: str) -> dict[str, Any]:
    """The request JSON from a file, or stdin for ``-``; CliError (exit 2) when unreadable."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(
            f"cannot read {path}: {exc.strerror or exc}; give the path of a request JSON file"
        ) from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{path} is not valid JSON ({exc}); fix the file (a TrainingRequest object)") from exc
    if not isinstance(data, dict):
        raise CliError(f"{path} must hold a JSON object (a TrainingRequest), got {type(data).__name__}")
    return data


def validate(payload: dict[str, Any]) -> None:
    """Validate locally with the splitter's own model; CliError (exit 2) with the same problems text."""
    from shardq.core.contracts import TrainingRequest, ValidationError

    try:
        TrainingRequest.from_dict(payload)
    except ValidationError as exc:
        raise CliError(f"{exc}\nnothing was submitted; fix the request and submit again") from None


def cmd_submit(args: argparse.Namespace) -> int:
    """Validate a request locally, invoke the splitter, print the job id; ``--wait`` watches it."""
    payload = load_request(args.request)
    if args.job_id:
        payload["job_id"] = args.job_id
    validate(payload)
    outputs = stack_outputs(args)
    with aws_errors(args):
        answer = (
            _submit_direct(args, outputs, payload)
            if args.direct
            else _invoke_splitter(args, outputs, payload)
        )
    if not answer.get("ok"):
        problems = answer.get("problems") or [answer.get("message", "rejected")]
        lines = "\n".join(f"  - {p}" for p in problems)
        raise CliError(f"the splitter rejected the request ({answer.get('error')}):\n{lines}")
    job_id = str(answer["job_id"])
    if args.json:
        print_json(answer)
    else:
        print(job_id)
        note = "submitted" if answer.get("created", True) else "already submitted (same request, same id)"
        print(
            f"{note}: {answer.get('shards', '?')} tasks per round, {answer.get('rounds', 1)} round(s); "
            f"follow it with: shardq watch {job_id}",
            file=sys.stderr,
        )
    if args.wait:
        return watch(args, job_id, out=sys.stderr if args.json else sys.stdout)
    return EXIT_OK


def _invoke_splitter(
    args: argparse.Namespace, outputs: dict[str, str], payload: dict[str, Any]
) -> dict[str, Any]:
    function = require_output(outputs, "SplitterFunctionName", args)
    resp = session_client("lambda", args).invoke(
        FunctionName=function, InvocationType="RequestResponse", Payload=json.dumps(payload).encode()
    )
    body = resp["Payload"].read()
    if resp.get("FunctionError"):
        detail = body.decode(errors="replace")[:500]
        raise AwsError(
            f"the splitter ({function}) failed: {detail}; see its CloudWatch logs, fix, and submit again "
            "(the same job_id is idempotent)"
        )
    try:
        answer = json.loads(body)
    except ValueError as exc:
        raise AwsError(
            f"the splitter ({function}) answered with something that is not JSON: {body[:200]!r}"
        ) from exc
    if not isinstance(answer, dict):
        raise AwsError(f"the splitter ({function}) answered {answer!r:.200}; expected a JSON object")
    return answer


def _submit_direct(
    args: argparse.Namespace, outputs: dict[str, str], payload: dict[str, Any]
) -> dict[str, Any]:
    """The splitter's logic in this process, for endpoints without the splitter deployed."""
    return dict(engine_for(args, outputs).answer(payload))


# -- status and list ------------------------------------------------------------------------


def status_data(job: JobRecord) -> dict[str, Any]:
    """``JobView`` fields plus per-(round, phase) progress: what ``status --json`` prints."""
    from shardq.core.operations import progress

    return {**job.view().to_dict(), "progress": [p.to_dict() for p in progress(job)]}


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.4g}%"


def policy_fields(request: dict[str, Any]) -> list[tuple[str, str | None]]:
    """How a ``data_parallel`` round runs, from a request as ``TrainingRequest.to_dict`` gives it.

    One ``(name, text)`` pair per policy field; the text is None when the request leaves the
    field unset (the default: every shard trains, a round waits for all, FedAvg, the stack's
    visibility timeout), so ``fields`` skips it.
    """
    part, quorum, strategy = request.get("participation"), request.get("quorum"), request.get("strategy")
    timeout = request.get("task_timeout_seconds")
    if part:
        part = (
            f"{_percent(part.get('fraction', 1.0))} of the shards per round "
            f"(at least {part.get('min_shards', 1)}, seed {part.get('seed', 0)})"
        )
    if quorum:
        deadline = quorum.get("deadline_seconds")
        quorum = f"closes at {_percent(quorum.get('fraction', 1.0))} succeeded" + (
            f", or at its deadline {duration(deadline)} after it starts" if deadline else ""
        )
    if strategy:
        params = ", ".join(f"{k}={v:g}" for k, v in sorted(strategy.items()) if k != "name")
        strategy = strategy.get("name", "fedavg") + (f" ({params})" if params else "")
    return [
        ("participation", part),
        ("quorum", quorum),
        ("strategy", strategy),
        ("task timeout", duration(timeout) if timeout else None),
    ]


def policy_line(request: dict[str, Any]) -> str | None:
    """The round policy on one line (``watch``), or None when the request sets none."""
    shown = [f"{name} {text}" for name, text in policy_fields(request) if text]
    return "policy: " + "; ".join(shown) if shown else None


def late_count(engine: Any, job: JobRecord) -> int:
    """Results recorded after their round closed; only a job with a closed round can have any."""
    return 0 if job.closed_round is None else len(engine.store.late_results(job.job_id))


def late_text(count: int) -> str | None:
    """The human line for ``count`` late results (None for none)."""
    if not count:
        return None
    return f"{count} result(s) arrived after their round closed (kept apart, never counted)"


def render_status(
    data: dict[str, Any], out: IO[str], *, request: dict[str, Any] | None = None, late: int = 0
) -> str:
    """The human view of ``status_data``, with the request's round policy and the late results."""
    head = fields(
        [
            ("job", data["job_id"]),
            ("status", paint_status(data["status"], out)),
            ("kind", data["kind"]),
            ("round", f"{data['round'] + 1}/{data['rounds']} ({data['phase']})"),
            ("tasks", f"{data['shard_count']} per round, {data['failed']} failed in all"),
            *policy_fields(request or {}),
            ("late", paint(late_text(late) or "", "yellow", out)),
            ("started", data["created_at"]),
            ("cancelling", data.get("cancel_requested_at") and f"since {data['cancel_requested_at']}"),
            ("finished", data.get("finished_at")),
            ("result", data.get("result_uri")),
            ("error", paint(data["error"], "red", out) if data.get("error") else None),
        ],
        out,
    )
    rows = [
        (
            p["round"] + 1,
            p["phase"],
            p["done"],
            Painted(str(p["failed"]), "red") if p["failed"] else p["failed"],
            p["total"],
            f"{p['enqueued']}/{p['total']}",
        )
        for p in data["progress"]
    ]
    return head + "\n\n" + table(rows, ("ROUND", "PHASE", "DONE", "FAILED", "TOTAL", "ENQUEUED"), out)


def cmd_status(args: argparse.Namespace) -> int:
    """Print a job's status and progress per round."""
    engine = engine_for(args)
    with aws_errors(args):
        job = get_job(engine, args.job)
        if args.wait and job.status == "RUNNING":
            return watch(
                args, args.job, out=sys.stderr if args.json else sys.stdout, quiet=True, engine=engine
            )
        if args.json:
            print_json(status_data(job))
        else:
            late = late_count(engine, job)
            print(render_status(status_data(job), sys.stdout, request=job.request.to_dict(), late=late))
    return EXIT_OK if not args.wait or job.status == "SUCCEEDED" else EXIT_JOB_FAILED


def list_jobs(engine: Any, statuses: tuple[str, ...], limit: int) -> list[JobRecord]:
    """Most recent jobs over ``statuses``, newest first."""
    jobs: list[JobRecord] = []
    for status in statuses:
        jobs.extend(engine.store.list_jobs(status, limit=limit))
    jobs.sort(key=lambda j: j.created_at, reverse=True)
    return jobs[:limit]


def cmd_list(args: argparse.Namespace) -> int:
    """List recent jobs, newest first."""
    engine = engine_for(args)
    statuses = (args.status,) if args.status else STATUSES
    with aws_errors(args):
        views = [j.view().to_dict() for j in list_jobs(engine, statuses, args.limit)]
    if args.json:
        print_json(views)
        return EXIT_OK
    if not views:
        print(
            "no jobs"
            + (f" with status {args.status}" if args.status else "")
            + "; submit one with shardq submit"
        )
        return EXIT_OK
    rows = [
        (
            v["job_id"],
            status_cell(v["status"]),
            v["kind"],
            f"{v['round'] + 1}/{v['rounds']}",
            f"{v['done']}/{v['shard_count']}",
            v["failed"],
            v["created_at"],
        )
        for v in views
    ]
    print(table(rows, ("JOB", "STATUS", "KIND", "ROUND", "DONE", "FAILED", "CREATED"), sys.stdout))
    return EXIT_OK


# -- watch ----------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """One observation of a job, as watch renders it (its fields are the ``progress`` JSON event)."""

    status: str
    round: int
    rounds: int
    phase: str
    total: int
    done: int
    failed: int
    rate: float | None
    eta_s: float | None

    def line(self) -> str:
        """The progress line without colours or bar."""
        text = (
            f"round {self.round + 1}/{self.rounds} {self.phase}: "
            f"{self.done}/{self.total} done, {self.failed} failed"
        )
        if self.rate is not None:
            text += f" · {self.rate:.1f} tasks/s · ETA {duration(self.eta_s)}"
        return text


def needed(job: JobRecord, round_no: int, phase: str) -> int:
    """Successes that close (round, phase): every task, or the quorum's share of a round's training."""
    expected = job.expected(round_no, phase)
    quorum = job.request.quorum
    if phase == "train" and quorum is not None:
        return min(expected, math.ceil(quorum.fraction * expected - 1e-9))
    return expected


def tasks_left(job: JobRecord, current: PhaseProgress) -> int:
    """Outcomes still to come before the job ends: the current phase's and every later phase's.

    A phase closes once each of its tasks has an outcome, or a round's training once its
    quorum's share of the participants succeeded (whichever comes first); a ``data_parallel``
    round adds its reduce. Zero once the last phase closed.
    """
    outstanding = current.total - current.done - current.failed
    to_quorum = needed(job, current.round, current.phase) - current.done
    left = max(0, min(outstanding, to_quorum))
    if job.kind == "data_parallel":
        left += 1 if current.phase == "train" else 0
        left += sum(needed(job, r, "train") + 1 for r in range(current.round + 1, job.rounds))
    return left


@dataclass
class Watch:
    """Follows a job to its end: a progress line per change, or a live view on a terminal.

    Failures are printed as they are recorded, with their error; throughput is measured over
    the last ``RATE_WINDOW_S`` seconds of completed tasks and the ETA covers the rest of the job.
    On a terminal, ``shardq.cli.live.LiveView`` draws a bar per round and phase and the job's
    bar with its ETA, redrawn in place; everywhere else the lines are plain text (no ANSI codes).
    """

    engine: Any
    job_id: str
    out: IO[str]
    interval: float = 2.0
    json_lines: bool = False
    quiet: bool = False
    clock: Any = time.monotonic
    samples: deque[tuple[float, int]] = field(default_factory=deque)
    seen_failures: set[str] = field(default_factory=set)
    last_line: str = ""
    live: bool = False
    late: int = 0
    view: Any = None

    def __post_init__(self) -> None:
        self.live = use_colour(self.out) and not self.json_lines and not self.quiet

    def snapshot(self, job: JobRecord) -> Snapshot:
        """Counters of the current phase, the throughput over the window and the job's ETA."""
        from shardq.core.operations import progress

        rows = progress(job)
        current = rows[-1]
        completed = sum(p.done + p.failed for p in rows)
        now = self.clock()
        self.samples.append((now, completed))
        while len(self.samples) > 2 and now - self.samples[0][0] > RATE_WINDOW_S:
            self.samples.popleft()
        rate = eta = None
        t0, c0 = self.samples[0]
        if now > t0 and completed > c0:
            rate = (completed - c0) / (now - t0)
            eta = tasks_left(job, current) / rate
        return Snapshot(
            status=job.status,
            round=current.round,
            rounds=job.rounds,
            phase=current.phase,
            total=current.total,
            done=current.done,
            failed=current.failed,
            rate=rate,
            eta_s=eta,
        )

    def emit(self, text: str, colour: str | None = None) -> None:
        """A whole line: above the live view on a terminal, else plain."""
        if self.view is not None:
            self.view.log(text, colour)
            return
        self.out.write((paint(text, colour, self.out) if colour else text) + "\n")
        self.out.flush()

    def progress_line(self, snap: Snapshot) -> None:
        """A line per change of the current phase's counters (not on a terminal: the view shows them)."""
        if self.json_lines or self.live:
            return
        text = snap.line()
        if text.split(" · ")[0] != self.last_line.split(" · ")[0]:
            if not self.quiet:
                self.emit(text)
            self.last_line = text

    def late_results(self, job: JobRecord) -> None:
        """Count the results that arrived after their round closed; a line when the count grows."""
        if self.json_lines or self.quiet:
            return
        count = late_count(self.engine, job)
        if count > self.late and not self.live:  # the live view shows the count itself
            self.emit(f"  late: {late_text(count)}", "yellow")
        self.late = count

    def failures(self, job: JobRecord) -> None:
        """Print failed outcomes not printed yet (queried only when a fail counter moved)."""
        from shardq.core.operations import failed_outcomes, progress

        if sum(p.failed for p in progress(job)) <= len(self.seen_failures):
            return
        for row in failed_outcomes(self.engine, self.job_id):
            r = row.result
            if r.key in self.seen_failures:
                continue
            self.seen_failures.add(r.key)
            if self.json_lines:
                print(json.dumps({"event": "failure", **r.to_dict(), "source": row.source}), file=self.out)
            elif not self.quiet:
                text = (
                    f"  failed: round {r.round + 1} shard {r.shard_id} ({r.task_type}): "
                    f"{r.error} [{row.source}, attempt {r.attempt}]"
                )
                self.emit(text, "red")

    def start(self, job: JobRecord) -> None:
        """The header (and the round policy, when the request sets one); the live view on a terminal."""
        if self.json_lines or self.quiet:
            return
        self.emit(
            f"watching {self.job_id} ({job.kind}, {job.task_count} tasks per round, {job.rounds} round(s))"
        )
        policy = policy_line(job.request.to_dict())
        if policy:
            self.emit(policy)
        if self.live:
            from shardq.cli.live import LiveView

            self.view = LiveView(self.out, clock=self.clock)
            self.view.start()

    def observe(self, job: JobRecord) -> None:
        """One poll's output: the progress event or line, the live view, failures, late results."""
        snap = self.snapshot(job)
        if self.json_lines:
            print(json.dumps({"event": "progress", "job_id": self.job_id, **snap.__dict__}), file=self.out)
            self.out.flush()
        self.progress_line(snap)
        self.failures(job)
        self.late_results(job)
        if self.view is not None:
            from shardq.core.operations import progress

            rows = progress(job)
            self.view.update(job, rows, snap, left=tasks_left(job, rows[-1]), late=self.late)

    def run(self, timeout: float | None = None) -> int:
        """Poll until the job ends (or ``timeout``); 0 when it SUCCEEDED, 1 otherwise."""
        started = self.clock()
        job = get_job(self.engine, self.job_id)
        self.start(job)
        try:
            while True:
                self.observe(job)
                if job.status != "RUNNING":
                    return self.finish(job, self.clock() - started)
                if timeout is not None and self.clock() - started > timeout:
                    self.stop_view()
                    self.emit(
                        f"{self.job_id} is still RUNNING after {duration(timeout)}; watch again to follow it"
                    )
                    return EXIT_JOB_FAILED
                time.sleep(self.interval)
                job = get_job(self.engine, self.job_id)
        finally:
            self.stop_view()

    def stop_view(self) -> None:
        """End the live view (its last frame stays on screen); later lines print below it."""
        if self.view is not None:
            self.view.stop()
            self.view = None

    def finish(self, job: JobRecord, elapsed: float) -> int:
        """The closing line; the exit code follows the status."""
        status = job.status
        self.stop_view()
        if self.json_lines:
            print(json.dumps({"event": "finished", **status_data(job)}, default=str), file=self.out)
        else:
            text = f"{self.job_id} {paint_status(status, self.out)} (watched {duration(elapsed)})"
            if job.error:
                text += f": {job.error}"
            self.emit(text)
            if job.result_uri:
                self.emit(f"result: {job.result_uri}  (shardq result {self.job_id})")
        self.out.flush()
        return EXIT_OK if status == "SUCCEEDED" else EXIT_JOB_FAILED


def watch(
    args: argparse.Namespace,
    job_id: str,
    *,
    out: IO[str] | None = None,
    quiet: bool = False,
    engine: Any = None,
) -> int:
    """Follow ``job_id`` to its end; the exit code says whether it SUCCEEDED."""
    engine = engine or engine_for(args)
    w = Watch(
        engine=engine,
        job_id=job_id,
        out=out or sys.stdout,
        interval=getattr(args, "interval", 2.0),
        json_lines=getattr(args, "json", False) and getattr(args, "command", "") == "watch",
        quiet=quiet,
    )
    with aws_errors(args):
        return w.run(timeout=getattr(args, "timeout", None))


def cmd_watch(args: argparse.Namespace) -> int:
    """Follow a job live until it finishes."""
    return watch(args, args.job)


# -- result ---------------------------------------------------------------------------------


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


def render_manifest(m: dict[str, Any], out: IO[str]) -> str:
    """The human view of a manifest: status, round policy, per-round metrics, the kind's section, failures."""
    parts = [
        fields(
            [
                ("job", m["job_id"]),
                ("status", paint_status(m["status"], out)),
                ("kind", m["kind"]),
                *policy_fields(m.get("request") or {}),
                ("created", m.get("created_at")),
                ("finished", m.get("finished_at")),
                ("error", m.get("error")),
                ("final model", m.get("final_model_uri")),
            ],
            out,
        )
    ]
    rounds = m.get("rounds") or []
    if rounds:
        names = sorted({n for r in rounds for n in r.get("metrics", {})})
        rows = [
            (
                r["round"] + 1,
                r.get("shards_succeeded"),
                r.get("shards_failed"),
                r.get("num_samples"),
                *(f"{r['metrics'][n]['mean']:.6g}" if n in r.get("metrics", {}) else "" for n in names),
            )
            for r in rounds
        ]
        parts.append(table(rows, ("ROUND", "OK", "FAILED", "SAMPLES", *names), out))
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


def _sweep_section(m: dict[str, Any], out: IO[str]) -> list[str]:
    """A sweep's best trial and leaderboard (top 10)."""
    objective = m.get("objective", {})
    board = m.get("leaderboard") or []
    parts = []
    if m.get("best"):
        best = m["best"]
        parts.append(
            f"best trial {best['trial']}: {objective.get('metric')} = {best['objective']} "
            f"({objective.get('direction')}) with {json.dumps(best['hyperparameters'], sort_keys=True)}\n"
            f"  artifact: {best.get('artifact_uri')}"
        )
    if board:
        rows = [
            (
                i + 1,
                b["trial"],
                b["objective"],
                json.dumps(b["hyperparameters"], sort_keys=True),
                b.get("artifact_uri"),
            )
            for i, b in enumerate(board[:10])
        ]
        headers = (
            "RANK",
            "TRIAL",
            objective.get("metric", "objective").upper(),
            "HYPERPARAMETERS",
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
        summary = [(n, f"{v['mean']:.6g}", f"{v['min']:.6g}", f"{v['max']:.6g}") for n, v in metrics.items()]
        parts.append(table(summary, ("METRIC", "MEAN", "MIN", "MAX"), out))
    rows = [(o["shard_id"], o.get("num_samples"), o.get("artifact_uri")) for o in outputs[:20]]
    # Manifest schema 2 keeps the first entries inline and the whole list in JSON Lines parts.
    total = int(m.get("outputs_count", len(outputs)))
    if rows:
        more = f" (first 20 of {total}; --json for the manifest)" if total > 20 else ""
        parts.append(table(rows, ("SHARD", "SAMPLES", "ARTIFACT"), out, title=f"outputs{more}"))
    if m.get("outputs_parts"):
        parts.append("all outputs, as JSON Lines: " + " ".join(m["outputs_parts"]))
    return parts


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
            print(render_manifest(manifest, sys.stdout))
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


# -- cancel and retry -----------------------------------------------------------------------


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a running job and say what is still in flight."""
    from shardq.core.jobstore import JobNotFound
    from shardq.core.operations import cancel

    engine = engine_for(args)
    with aws_errors(args):
        try:
            report = cancel(engine, args.job)
        except JobNotFound:
            get_job(engine, args.job)  # raises the NotFoundError with its fix
            raise
    if args.json:
        print_json(report.to_dict())
    elif report.cancelled and report.closing_ranges:
        print(
            f"{args.job} is being cancelled: workers drop its queued tasks unrun, and its round closes in "
            f"{report.closing_ranges} ranges; it is {paint_status('CANCELLED')} when the last is stored "
            f"(`shardq status {args.job}`)."
        )
    elif report.cancelled:
        print(f"{args.job} {paint_status('CANCELLED')}: workers drop its queued tasks unrun.")
        if report.outstanding:
            running = (
                f"at most {report.queue_in_flight} of them are held by workers right now"
                if report.queue_in_flight is not None
                else "the ones workers hold"
            )
            print(
                f"{report.outstanding} task(s) of round {report.round + 1} ({report.phase}) have no "
                f"result yet; {running} and will run to the end; their results are recorded but "
                "change nothing."
            )
        else:
            print("no task is in flight.")
    elif report.status == "CANCELLED":
        print(f"{args.job} was already CANCELLED; nothing to do.")
    else:
        raise CliError(f"job {args.job} already finished as {report.status}; there is nothing to cancel")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    """Re-enqueue a job's failed shards with fresh deduplication ids; the job resumes."""
    from shardq.core.jobstore import JobNotFound
    from shardq.core.operations import OperationError, retry_failed

    engine = engine_for(args)
    with aws_errors(args):
        try:
            report = retry_failed(engine, args.job)
        except JobNotFound:
            get_job(engine, args.job)
            raise
        except OperationError as exc:
            raise CliError(str(exc)) from None
    if args.json:
        print_json(report.to_dict())
    else:
        shards = ", ".join(str(s) for s in report.retried[:20]) + (" ..." if len(report.retried) > 20 else "")
        print(
            f"{args.job}: re-enqueued {len(report.retried)} {report.phase} task(s) of round "
            f"{report.round + 1} (shards {shards}; generation {report.generation}); "
            f"job is {paint_status(report.status)}"
        )
        print(f"follow it with: shardq watch {args.job}")
    if args.wait:
        return watch(args, args.job)
    return EXIT_OK


# -- registration ---------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    """Add the job commands."""
    p = add_command(
        sub,
        "submit",
        help="validate a training request, start the job, print its id",
        example="  shardq submit examples/requests/data_parallel.json --wait\n"
        "  JOB=$(shardq submit req.json --job-id nightly-2026-01-31)",
    )
    p.add_argument("request", help="TrainingRequest JSON file ('-' for stdin)")
    p.add_argument("--job-id", help="client token: the same id submitted twice is one job")
    p.add_argument("--wait", action="store_true", help="then watch the job (exit code follows its status)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls with --wait")
    p.add_argument("--timeout", type=float, default=None, help="stop waiting after this many seconds")
    p.add_argument("--json", action="store_true", help="print the splitter's answer as JSON")
    p.add_argument(
        "--direct",
        action="store_true",
        help="run the splitter's logic in this process instead of invoking the Lambda "
        "(for endpoints where the splitter is not deployed)",
    )
    p.set_defaults(func=cmd_submit)

    p = add_command(
        sub,
        "status",
        help="a job's status and progress per round",
        example="  shardq status job-20260131-120000-1a2b3c4d\n  shardq status JOB --json | jq .progress",
    )
    p.add_argument("job", help="job id")
    p.add_argument("--json", action="store_true", help="JobView fields plus progress, as JSON")
    p.add_argument("--wait", action="store_true", help="wait until the job ends; exit 1 unless it SUCCEEDED")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls with --wait")
    p.add_argument("--timeout", type=float, default=None, help="stop waiting after this many seconds")
    p.set_defaults(func=cmd_status)

    p = add_command(
        sub, "list", help="recent jobs, newest first", example="  shardq list --status RUNNING --limit 5"
    )
    p.add_argument("--status", choices=STATUSES, help="only jobs with this status")
    p.add_argument("--limit", type=int, default=20, help="at most this many jobs (default 20)")
    p.add_argument("--json", action="store_true", help="JobView objects as a JSON list")
    p.set_defaults(func=cmd_list)

    p = add_command(
        sub,
        "watch",
        help="follow a job live: progress per round, throughput, ETA, failures",
        example="  shardq watch JOB && echo trained\n  shardq watch JOB --json   # JSON lines, one per poll",
    )
    p.add_argument("job", help="job id")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls (default 2)")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (exit 1)")
    p.add_argument("--json", action="store_true", help="JSON lines: progress, failure and finished events")
    p.set_defaults(func=cmd_watch)

    p = add_command(
        sub,
        "result",
        help="a finished job's result manifest (metrics, leaderboard, outputs)",
        example="  shardq result JOB\n  shardq result JOB --download ./model",
    )
    p.add_argument("job", help="job id")
    p.add_argument("--json", action="store_true", help="the manifest as stored (result.json)")
    p.add_argument("--download", metavar="DIR", help="save result.json and the final / best model here")
    p.add_argument(
        "--plot", metavar="FILE.png", help="draw the metric curves per round into an image (make dashboard)"
    )
    p.set_defaults(func=cmd_result)

    p = add_command(
        sub,
        "cancel",
        help="cancel a running job; prints what will still finish",
        example="  shardq cancel JOB",
    )
    p.add_argument("job", help="job id")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(func=cmd_cancel)

    p = add_command(
        sub,
        "retry",
        help="re-enqueue a job's failed shards with fresh deduplication ids; the job resumes",
        example="  shardq retry JOB --wait",
    )
    p.add_argument("job", help="job id")
    p.add_argument("--wait", action="store_true", help="then watch the job")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls with --wait")
    p.add_argument("--timeout", type=float, default=None, help="stop waiting after this many seconds")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(func=cmd_retry)
