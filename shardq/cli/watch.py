"""The ``watch`` command: follow a job live (progress per round, throughput, ETA, failures, stalls)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from shardq.cli.common import (
    EXIT_JOB_FAILED,
    EXIT_OK,
    CliError,
    aws_errors,
    duration,
    engine_for,
    get_job,
    paint,
    paint_status,
    stack_outputs,
    use_colour,
)
from shardq.cli.scheduling_view import snapshot_fields, watch_suffix
from shardq.cli.status import global_metrics, late_text, metric_text, outcome_counts, policy_line, status_data
from shardq.core import fedbuff_view
from shardq.core.async_sweep import async_progress
from shardq.core.budgets import cost_of
from shardq.core.stall import DEFAULT_STALL_AFTER_S
from shardq.core.tally import plan_text, tally, tasks_left

if TYPE_CHECKING:
    from shardq.core.jobstore import JobRecord

# Throughput is measured over this trailing window, so the ETA follows the current pace.
RATE_WINDOW_S = 30.0


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
    # Why the job stands still (``shardq.core.stall``); the ETA is withheld meanwhile.
    stall: str | None = None
    # Of ``done``, the sweep trials that diverged (a non-finite objective, ``shardq.core.verdicts``).
    diverged: int = 0
    # ``ENQUEUING n/N sent`` while the phase's tasks are not all on the queue (a fan-out under way,
    # or one that died: then nothing moves until the same request is submitted again).
    enqueuing: str | None = None
    # An asynchronous sweep's progress over all its rungs (``27 tasks done, 4 in flight, up to 40``).
    sweep: str | None = None
    # A FedBuff job's versions, open buffer, late updates and staleness (``fedbuff_view.line``).
    fedbuff: str | None = None
    # What its counted outcomes cost so far, and its budget (``shardq.core.spend``).
    cost_usd: float = 0.0
    budget_usd: float | None = None
    budget_stopped_at: str | None = None
    # Whose job, how urgent, and its window (``shardq.cli.scheduling_view``).
    tenant: str | None = None
    priority: int | None = None
    queued: int | None = None
    window: int | None = None

    def line(self) -> str:
        """The progress line without colours or bar."""
        text = (
            f"round {self.round + 1}/{self.rounds} {self.phase}: "
            f"{self.done}/{self.total} done, {outcome_counts(self.failed, self.diverged)}"
        )
        if self.sweep is not None:
            text = f"{self.sweep}, {outcome_counts(self.failed, self.diverged)}"
        if self.fedbuff is not None:
            text = f"{self.fedbuff}, {outcome_counts(self.failed, self.diverged)}"
        if self.enqueuing is not None:
            text += f" · {self.enqueuing}"
        cost = cost_of(self.__dict__)
        if cost is not None:
            text += f" · {cost}"
        text += watch_suffix(self.__dict__)
        if self.stall is not None:
            text += " · ETA —"
        elif self.rate is not None:
            text += f" · {self.rate:.1f} tasks/s · ETA {duration(self.eta_s)}"
        return text


def _sweep_fields(job: Any) -> dict[str, Any]:
    """An asynchronous sweep's snapshot fields: every rung's counts at once, not the last rung's."""
    if not job.request.asynchronous:
        return {}
    sweep = async_progress(job)
    return {
        "sweep": sweep.text(),
        "done": sweep.done - sweep.failed,
        "failed": sweep.failed,
        "diverged": sweep.diverged,
        "total": sweep.up_to,
    }


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
    last_line: str = ""
    live: bool = False
    late: int = 0
    view: Any = None
    # Rounds whose summary (global model's metrics) was printed: the first ``headlined`` rounds.
    headlined: int | None = None
    # Round → its global model's metrics in words, for the live view's reduce rows.
    global_text: dict[int, str] = field(default_factory=dict)
    # Queue name → URL (``tasks``, ``results-dlq``, ``tasks-dlq``): read only once the job stood
    # still for ``stall_after`` seconds (``shardq.core.stall``).
    queues: dict[str, str] = field(default_factory=dict)
    stall_after: float = DEFAULT_STALL_AFTER_S
    stall: Any = None
    follower: Any = None
    stall_watch: Any = None
    # A failure's error as recorded (with the worker's traceback), not just its first line.
    tracebacks: bool = False
    # ``watch --mlflow``: called with the job record after every poll (``shardq.cli.track``).
    tracker: Any = None
    hinted: bool = False
    enqueuing_hinted: bool = False
    # A FedBuff job's failed updates printed so far (``failed_updates``).
    fb_failed: int = 0

    def __post_init__(self) -> None:
        from shardq.core.progress_reads import FailureFollower
        from shardq.core.stall import StallWatch

        self.live = use_colour(self.out) and not self.json_lines and not self.quiet
        # Each poll reads the job record and only the outcomes recorded since the last poll.
        self.follower = FailureFollower(self.engine.store, self.job_id)
        self.stall_watch = StallWatch(
            self.engine.sqs, self.queues, stall_after_s=self.stall_after, clock=self.clock
        )

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
        if now > t0 and completed > c0 and self.stall is None:
            rate = (completed - c0) / (now - t0)
            eta = tasks_left(job, current) / rate
        counts: dict[str, Any] = {"total": current.total, "done": current.done, "failed": current.failed}
        counts["diverged"] = current.diverged
        counts.update(_sweep_fields(job))  # an asynchronous sweep: every rung's, not the last one's
        fb = fedbuff_view.live(job)  # a FedBuff job: its versions and buffer; failures of every version
        if fb is not None:
            counts.update(fedbuff=fedbuff_view.line(fb), failed=fb["updates_failed"])
        return Snapshot(
            status=job.status,
            round=current.round,
            rounds=job.rounds,
            phase=current.phase,
            rate=rate,
            eta_s=eta,
            stall=self.stall.message if self.stall is not None else None,
            enqueuing=job.enqueuing(),
            **counts,
            cost_usd=job.cost_micro_usd / 1_000_000,
            budget_usd=job.request.budget_usd,
            budget_stopped_at=None if job.budget_stop is None else job.budget_stop.get("at"),
            **snapshot_fields(job.view().to_dict()),
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
        if text.split(" · ")[0] != self.last_line.split(" · ")[0] or (
            snap.enqueuing is not None and snap.enqueuing not in self.last_line
        ):
            if not self.quiet:
                self.emit(text)
                if snap.enqueuing is not None and not self.enqueuing_hinted:
                    # Once per watch: a fan-out that died leaves the job here until it is finished.
                    self.emit(
                        "  not every task is on the queue yet; if the submit that started the job "
                        "failed, submit the same request again under this id to finish it (nothing "
                        "is sent twice)",
                        "yellow",
                    )
                    self.enqueuing_hinted = True
            self.last_line = text

    def late_results(self, job: JobRecord) -> None:
        """Count the results that arrived after their round closed; a line when the count grows."""
        if self.json_lines or self.quiet:
            return
        count = self.follower.late
        if count > self.late and not self.live:  # the live view shows the count itself
            self.emit(f"  late: {late_text(count)}", "yellow")
        self.late = count

    def failures(self, job: JobRecord) -> None:
        """Print failed outcomes not printed yet: only those recorded since the last poll are read
        (``shardq.core.progress_reads.FailureFollower``), and only when a fail counter moved."""
        if self.quiet:
            return
        self.failed_updates(job)
        for row in self.follower.poll(job):
            r = row.result
            if self.json_lines:
                print(json.dumps({"event": "failure", **r.to_dict(), "source": row.source}), file=self.out)
            elif not self.quiet:
                lines = (r.error or "").splitlines() or [""]
                error = r.error if self.tracebacks else lines[0]
                text = (
                    f"  failed: round {r.round + 1} shard {r.shard_id} ({r.task_type}): "
                    f"{error} [{row.source}, attempt {r.attempt}]"
                )
                self.emit(text, "red")
                if len(lines) > 1 and not self.tracebacks and not self.hinted:
                    # Once per watch: a traceback per failed shard buries the progress lines.
                    self.emit("  (tracebacks not shown: add --traceback, or see `shardq result JOB --json`)")
                    self.hinted = True

    def failed_updates(self, job: JobRecord) -> None:
        """A FedBuff job's failed updates not printed yet (read only when its failure count grew)."""
        fb = fedbuff_view.live(job)
        if fb is None or fb["updates_failed"] <= self.fb_failed:
            return
        for f in fedbuff_view.failed_updates(self.engine.store, job.job_id)[self.fb_failed :]:
            if self.json_lines:
                print(json.dumps({"event": "failure", "task_type": "train", **f}), file=self.out)
            else:
                error = f["error"] if self.tracebacks else (f["error"].splitlines() or [""])[0]
                where = f"update {f['update']} of client {f['client']} (version {f['version']})"
                self.emit(f"  failed: {where}: {error}", "red")
        self.fb_failed = fb["updates_failed"]

    def round_headlines(self, job: JobRecord) -> None:
        """A line per closed round whose reduce scored the global model: its metrics first, then
        the shards' weighted means (read only when a round closed; a watch that starts late shows
        the latest round alone)."""
        if self.json_lines or self.quiet or job.kind != "data_parallel":
            return
        # Rounds done with their reduce: those before the current one, and the current one once the
        # job ended. A round whose training closed has a summary before its reduce reports the
        # global model, so counting summaries instead would mark a round in its reduce phase as
        # headlined, and its global model would never be shown (a quorum's early close makes that
        # window the common case).
        closed = job.round + (1 if job.terminal else 0)
        if self.headlined is not None and closed <= self.headlined:
            return
        summaries = sorted(self.engine.store.round_summaries(self.job_id), key=lambda s: int(s["round"]))
        first = self.headlined if self.headlined is not None else max(0, closed - 1)
        for summary in summaries:
            round_no = int(summary["round"])
            model = global_metrics(summary)
            if model:
                self.global_text[round_no] = metric_text(model)
            if not first <= round_no < closed or not model:
                continue
            means = {n: v["mean"] for n, v in (summary.get("metrics") or {}).items()}
            text = f"round {round_no + 1}/{job.rounds} global model: {metric_text(model)}"
            self.emit(text + (f" · shards' mean: {metric_text(means)}" if means else ""))
        self.headlined = closed

    def start(self, job: JobRecord) -> None:
        """The header (and the round policy, when the request sets one); the live view on a terminal."""
        if self.json_lines or self.quiet:
            return
        self.emit(f"watching {self.job_id} ({job.kind}, {plan_text(job)})")
        policy = policy_line(job.request.to_dict())
        if policy:
            self.emit(policy)
        from shardq.core.pipeline import after_view

        after = after_view(job)
        if after is not None and after["waiting"]:
            self.emit(after["text"])
        if self.live:
            from shardq.cli.live import LiveView

            self.view = LiveView(self.out, clock=self.clock)
            self.view.start()

    def stalled(self, job: JobRecord) -> None:
        """Notice a job that stopped moving: a warning line when a stall starts, one when it ends."""
        was = self.stall
        self.stall = self.stall_watch.observe(job)
        if self.json_lines or self.quiet or self.live:  # the JSON event and the live view carry it
            return
        if self.stall is not None and (was is None or was.reason != self.stall.reason):
            self.emit(f"  stalled: {self.stall.message}", "yellow")
        elif self.stall is None and was is not None:
            self.emit("  progress resumed")

    def observe(self, job: JobRecord) -> None:
        """One poll's output: the progress event or line, the live view, failures, late results."""
        self.stalled(job)
        snap = self.snapshot(job)
        if self.json_lines:
            print(json.dumps({"event": "progress", "job_id": self.job_id, **snap.__dict__}), file=self.out)
            self.out.flush()
        self.progress_line(snap)
        self.failures(job)
        self.late_results(job)
        self.round_headlines(job)
        if self.tracker is not None:
            self.tracker(job)
        if self.view is not None:
            from shardq.core.operations import progress

            rows = progress(job)
            left = tasks_left(job, rows[-1])
            self.view.update(
                job, rows, snap, left=left, late=self.late, stall=snap.stall, global_text=self.global_text
            )

    def run(self, timeout: float | None = None) -> int:
        """Poll until the job ends (or ``timeout``); 0 when it SUCCEEDED, 1 otherwise."""
        started = self.clock()
        job = get_job(self.engine, self.job_id)
        self.start(job)
        try:
            while True:
                self.observe(job)
                if job.status not in ("RUNNING", "WAITING"):  # WAITING: a pipeline job, not started yet
                    return self.finish(job, self.clock() - started)
                if timeout is not None and self.clock() - started > timeout:
                    self.stop_view()
                    note = (
                        f"{self.job_id} is still {job.status} after {duration(timeout)}; "
                        "watch again to follow it"
                    )
                    if self.json_lines:  # stdout carries JSON lines only
                        print(note, file=sys.stderr)
                    else:
                        self.emit(note)
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
            cost = cost_of(job.view().to_dict())
            if cost is not None:
                self.emit(f"  cost: {cost}")
            diverged = tally(job).diverged
            if diverged:
                self.emit(
                    f"  {diverged} trial(s) diverged (a non-finite objective): ranked last, never promoted",
                    "yellow",
                )
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
    outputs = stack_outputs(args)
    engine = engine or engine_for(args, outputs)
    stall_after = getattr(args, "stall_after", None)
    stall_after = DEFAULT_STALL_AFTER_S if stall_after is None else stall_after
    if stall_after <= 0:
        raise CliError(f"--stall-after must be a number of seconds > 0, got {stall_after:g}")
    w = Watch(
        engine=engine,
        job_id=job_id,
        out=out or sys.stdout,
        interval=getattr(args, "interval", 2.0),
        json_lines=getattr(args, "json", False) and getattr(args, "command", "") == "watch",
        quiet=quiet,
        queues=watched_queues(outputs),
        stall_after=stall_after,
        tracebacks=getattr(args, "traceback", False),
    )
    if getattr(args, "mlflow", None) and getattr(args, "command", "") == "watch":
        from shardq.cli.track import new_tracker

        w.tracker = new_tracker(args, engine)
    with aws_errors(args):
        return w.run(timeout=getattr(args, "timeout", None))


def watched_queues(outputs: dict[str, str]) -> dict[str, str]:
    """The queues a stall is explained from, by the names ``shardq.core.stall`` reads."""
    names = {"tasks": "TaskQueueUrl", "results-dlq": "ResultsDlqUrl", "tasks-dlq": "TaskDlqUrl"}
    return {name: outputs[key] for name, key in names.items() if outputs.get(key)}


def cmd_watch(args: argparse.Namespace) -> int:
    """Follow a job live until it finishes."""
    return watch(args, args.job)
