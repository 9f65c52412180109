"""The CLI on a real terminal (a pseudo-terminal) and in a pipe, against the local cloud.

``shardq`` runs as its own process with a pseudo-terminal as stdin, stdout and stderr, as in a
person's shell; the test reads what it draws. In a pipe (the in-process runs) the same commands
print plain text without a single ANSI code.
"""

from __future__ import annotations

import ast
import dataclasses
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path
from typing import Any

import pytest

from shardq.core.contracts import TrainingRequest
from shardq.core.engine import Engine
from shardq.core.jobstore import JobRecord, Outcome
from shardq.core.operations import progress
from shardq.core.tally import needed, tasks_left
from tests.cli.conftest import Background, Shardq
from tests.cli.test_jobs import MAP, submit, take_tasks, work
from tests.helpers import result_for

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
WATCHED = re.compile(r"\(watched [^)]*\)")
# A data_parallel job whose rounds close at 2 of their 4 shards: the others' results come late.
QUORUM = {
    "kind": "data_parallel",
    "dataset": {"uri": "s3://data/set", "num_samples": 400},
    "sharding": {"shard_count": 4},
    "rounds": 2,
    "max_parallel": 4,
    "quorum": {"fraction": 0.5, "deadline_seconds": 600},
    "strategy": {"name": "fedavgm"},
    # FedAvgM steps from the global model, so round 0 needs one (results here are simulated)
    "model": {"init_uri": "s3://models/init.npz"},
}


class Terminal:
    """``python -m shardq ARGS`` on a pseudo-terminal of ``cols`` x ``rows``; its output as it comes."""

    def __init__(self, *argv: str, cols: int = 110, rows: int = 30, **extra_env: str) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color"}
        for name in ("NO_COLOR", "COLUMNS", "LINES", "FORCE_COLOR"):
            env.pop(name, None)
        env.update(extra_env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shardq", *argv],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=ROOT,
        )
        os.close(slave)
        self.master = master
        self.raw = b""
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the process closed its end
                chunk = b""
            with self.changed:
                self.raw += chunk
                self.changed.notify_all()
            if not chunk:
                return

    @property
    def text(self) -> str:
        """Everything drawn so far, escape codes included."""
        return self.raw.decode(errors="replace")

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        """Block until ``text`` was drawn (escape codes removed); AssertionError after ``timeout``."""
        with self.changed:
            if not self.changed.wait_for(lambda: text in ANSI.sub("", self.text), timeout):
                raise AssertionError(f"never drew {text!r}; drawn so far:\n{self.text}")

    def finish(self, timeout: float = 90.0) -> int:
        """The exit code, once the process ended and its output was read to the end."""
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.reader.join(10)
            os.close(self.master)
        return code


def test_watch_draws_a_live_view_on_a_terminal_and_exits_0(
    shardq: Shardq, write_request: Any, engine: Engine
) -> None:
    # GIVEN a data_parallel job with a quorum of 2 of 4 shards, watched on a terminal
    job_id = submit(shardq, write_request, QUORUM, "--job-id", "tty-watch")
    term = Terminal("watch", job_id, "--interval", "0.1", "--timeout", "120")

    def worker() -> None:
        term.wait_for("round 1/2 train")
        for round_no in range(2):
            tasks = {t.shard_id: t for t, _ in take_tasks(engine)}
            # two shards close the round; a third reports after the close and is kept as late
            engine.ingest([Outcome(result_for(tasks[0])), Outcome(result_for(tasks[1]))])
            engine.ingest([Outcome(result_for(tasks[3]))])
            term.wait_for(f"late: {round_no + 1} result(s)")
            (reduce,) = (t for t, _ in take_tasks(engine))
            engine.ingest([Outcome(result_for(reduce))])

    working = Background(worker)
    # WHEN the worker has run both rounds
    code = term.finish()
    working.join()
    # THEN watch drew the live view with colours and exited 0 with the job's outcome
    assert code == 0, term.text
    plain = ANSI.sub("", term.text)
    assert "watching tty-watch (data_parallel, 4 shard(s), 2 round(s))" in plain
    assert "policy: quorum closes at 50% succeeded" in plain and "strategy fedavgm" in plain
    for row in ("round 1/2 train", "round 1/2 reduce", "round 2/2 train", "round 2/2 reduce", "job"):
        assert row in plain, row
    assert "closed early (quorum or deadline)" in plain
    assert "round closes at its deadline in" in plain
    assert re.search(r"tasks/s · ETA \S+ · elapsed", plain)
    assert "━" in plain  # rich's bars
    assert "\x1b[?25l" in term.text and "\x1b[?25h" in term.text  # cursor hidden while live, then shown
    assert "\x1b[32m" in term.text  # green: the finished bars and the SUCCEEDED status
    assert re.search(r"tty-watch .*SUCCEEDED.* \(watched", plain)
    assert "result: s3://" in plain


def test_watch_on_a_terminal_shows_failures_and_exits_1(
    shardq: Shardq, write_request: Any, engine: Engine
) -> None:
    job_id = submit(shardq, write_request, MAP, "--job-id", "tty-fail")
    term = Terminal("watch", job_id, "--interval", "0.1", "--timeout", "120")
    working = Background(lambda: (term.wait_for("round 1/1 train"), work(engine, fail={2})))
    code = term.finish()
    working.join()
    assert code == 1, term.text
    plain = ANSI.sub("", term.text)
    assert "failed: round 1 shard 2 (train): CUDA out of memory [worker, attempt 1]" in plain
    assert "tty-fail FAILED" in plain and "over max_failed_shards=0" in plain
    assert "\x1b[31m" in term.text  # the failure in red


def test_status_list_and_result_draw_tables_on_a_terminal_and_plain_text_in_a_pipe(
    shardq: Shardq, write_request: Any, engine: Engine
) -> None:
    # GIVEN a finished quorum job with a late result
    job_id = submit(shardq, write_request, {**QUORUM, "rounds": 1}, "--job-id", "tty-tables")
    tasks = {t.shard_id: t for t, _ in take_tasks(engine)}
    engine.ingest([Outcome(result_for(tasks[0])), Outcome(result_for(tasks[1]))])
    engine.ingest([Outcome(result_for(tasks[2]))])
    work(engine)
    assert engine.status(job_id).status == "SUCCEEDED"
    for argv in (("status", job_id), ("list",), ("result", job_id)):
        # WHEN each is read on a terminal and in a pipe
        term = Terminal(*argv)
        assert term.finish() == 0, term.text
        piped = shardq(*argv)
        assert piped.code == 0, piped.err
        # THEN the terminal gets rich's tables in colour, the pipe the same facts in plain text
        assert ANSI.search(term.text), argv
        assert not ANSI.search(piped.out), argv
        drawn = ANSI.sub("", term.text)
        for fact in ("tty-tables", "SUCCEEDED"):
            assert fact in drawn and fact in piped.out, (argv, fact)
    status = shardq("status", job_id).out
    assert re.search(
        r"\nquorum: +closes at 50% succeeded, or at its deadline 10m00s after it starts\n", status
    )
    assert re.search(r"\nstrategy: +fedavgm \(momentum=0, server_lr=1\)\n", status)
    assert re.search(
        r"\nlate: +1 result\(s\) arrived after their round closed or the job ended "
        r"\(kept apart, not counted\)",
        status,
    )
    assert "quorum:" in shardq("result", job_id).out  # from the manifest's request


@pytest.mark.parametrize("env", [{"NO_COLOR": "1"}, {"TERM": "dumb"}])
def test_no_color_or_a_dumb_terminal_gets_the_plain_text(
    shardq: Shardq, write_request: Any, engine: Engine, env: dict[str, str]
) -> None:
    # GIVEN a finished job, read on a terminal that asks for no colours
    job_id = submit(shardq, write_request, MAP, "--job-id", "tty-plain")
    work(engine)
    for argv in (("status", job_id), ("watch", job_id, "--interval", "0.1")):
        term = Terminal(*argv, **env)
        assert term.finish() == 0, term.text
        # THEN it prints what a pipe gets (the terminal's line ends aside), without an escape code
        assert not ANSI.search(term.text), (argv, term.text)
        drawn, piped = term.text.replace("\r\n", "\n"), shardq(*argv).out
        assert WATCHED.sub("(watched)", drawn) == WATCHED.sub("(watched)", piped)


def test_a_reader_that_closes_the_pipe_early_stops_the_command_quietly() -> None:
    # GIVEN `shardq ... | head`, whose reader is gone before the output is (a new user's trial got
    # "shardq: unexpected error: BrokenPipeError ... report it", exit 1)
    read, write = os.pipe()
    os.close(read)
    # WHEN a command prints into it (estimate reads no cloud)
    run = subprocess.run(
        [sys.executable, "-m", "shardq", "estimate", "examples/requests/sweep_halving.json"],
        cwd=ROOT, stdout=write, stderr=subprocess.PIPE, text=True, timeout=120, check=False,
    )  # fmt: skip
    os.close(write)
    # THEN it stops without a word, with the exit status a shell gives a program cut off by SIGPIPE
    assert (run.returncode, run.stderr) == (141, "")


@pytest.mark.parametrize("command", ["status", "result"])
def test_plain_output_of_a_job_without_a_round_policy_is_unchanged(
    shardq: Shardq, write_request: Any, engine: Engine, command: str
) -> None:
    job_id = submit(shardq, write_request, MAP, "--job-id", f"plain-{command}")
    work(engine)
    out = shardq(command, job_id).out
    assert not {"participation:", "quorum:", "strategy:", "task timeout:", "late:"} & set(out.split())
    assert "\033[" not in out


# -- what the ETA counts (no cloud: the job record alone) ------------------------------------


def record(request: dict[str, Any], **state: Any) -> JobRecord:
    """A job record of ``request`` at ``state`` (round, phase, counters), as the store would read it."""
    parsed = TrainingRequest.from_dict(request)
    return dataclasses.replace(JobRecord.new(parsed, "eta", "hash"), **state)


def test_tasks_left_counts_the_quorum_share_of_each_rounds_participants(make_request: Any) -> None:
    # GIVEN 12 shards, 75 % of them per round (9), a round closing at 80 % of those (8), 4 rounds
    request = make_request(
        shards=12, rounds=4, participation={"fraction": 0.75, "seed": 7}, quorum={"fraction": 0.8}
    )
    # WHEN round 1's training has 3 outcomes
    job = record(request, counters={("ok", 0, "train"): 2, ("fail", 0, "train"): 1})
    (current,) = progress(job)
    # THEN 6 more successes close it (the failure does not count), then its reduce, then 3 rounds
    # of 8 + 1
    assert needed(job, 0, "train") == 8 and needed(job, 0, "reduce") == 1
    assert tasks_left(job, current) == 6 + 1 + 3 * (8 + 1)
    # AND after 3 failures only 4 outcomes can still come: the round closes once all reported
    many_failed = record(request, counters={("ok", 0, "train"): 2, ("fail", 0, "train"): 1 + 2})
    assert tasks_left(many_failed, progress(many_failed)[-1]) == 4 + 1 + 3 * (8 + 1)
    # AND in the last round's reduce nothing is left once it reported
    last = record(request, round=3, phase="reduce", counters={("ok", 3, "reduce"): 1})
    assert tasks_left(last, progress(last)[-1]) == 0


def test_tasks_left_of_a_map_job_is_its_tasks_without_an_outcome(make_request: Any) -> None:
    job = record(make_request("map", shards=4), counters={("ok", 0, "train"): 1})
    assert tasks_left(job, progress(job)[-1]) == 3


# -- where rich may be imported ---------------------------------------------------------------


def test_rich_stays_out_of_the_lambda_asset_and_of_plain_runs() -> None:
    # The Lambda asset (lambdas/ and shardq/core/) never imports rich ...
    for path in [*(ROOT / "lambdas").rglob("*.py"), *(ROOT / "shardq" / "core").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not [n for n in names if n.split(".")[0] == "rich"], path
    # ... and the CLI loads it only to draw on a terminal: importing every command does not.
    probe = "import sys, shardq.cli; print('rich' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert loaded.stdout.strip() == "False"
