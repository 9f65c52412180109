"""Run a training function in a child process, so a time limit can stop it.

A Python thread cannot be stopped from outside, and a training function may sit in native code
(a CUDA kernel, a blocking read) where no cooperative check runs. A process can always be killed,
and killing it frees what it held (GPU memory, file handles). So a task with ``timeout_s`` runs
its function in a child process: a fresh interpreter (``python -m shardq.worker.isolation``), not
a fork of the worker's threads, locks and boto3 connections (CUDA cannot run in a forked child
either), and not ``multiprocessing``'s ``spawn``, which re-runs the parent's main script (a script
that embeds a ``Worker`` without an ``if __name__ == "__main__"`` guard would start over). The
worker's slot thread stays in the parent: it keeps the heartbeat, serves the child's requests over
a private socket pair, and stops the child at the deadline or on shutdown.

Over the pipe the child sends progress, log lines and ``ctx.fetch`` requests (the parent
downloads with the worker's own clients and answers with the local path), then its outcome or
its error. Downloads of the task's inputs and the upload of its outputs stay in the parent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from shardq.core.contracts import ShardTask
from shardq.worker.stop import Stopped
from shardq.worker.trust import AllowList

# How long a finished child may take to exit before it is killed.
EXIT_GRACE_S = 5.0
POLL_S = 0.2


class TaskTimeout(RuntimeError):
    """The task ran past its ``timeout_s`` and was stopped; a retry would run as long again."""


class IsolatedTaskError(RuntimeError):
    """The training function raised in its child process (the child's type, message, traceback).

    ``permanent`` when every attempt would fail alike (the entrypoint cannot load, the model
    cannot be read).
    """

    def __init__(self, text: str, permanent: bool) -> None:
        super().__init__(text)
        self.permanent = permanent


class TaskAbandonedInChild(RuntimeError):
    """The worker gave the task up (shutdown) while its child ran; the child was stopped."""


@dataclass(frozen=True)
class ChildContext:
    """The picklable part of a ``TaskContext``; the child rebuilds the rest around its pipe."""

    data: dict[str, Any]
    work_dir: str
    output_dir: str
    init_model_path: str | None
    input_models: list[tuple[str, int]]
    device: str
    proximal_mu: float
    strategy: dict[str, Any]
    eval_dataset: dict[str, Any] | None = None
    # The worker's allow-list: the child checks it again before it imports the entrypoint.
    allow: tuple[str, ...] = ()
    # The checkpoint contract (shardq.worker.checkpoints): saves and should_stop go over the pipe.
    checkpoint_dir: str | None = None
    resume_path: str | None = None
    resume_step: int | None = None


class _PipeHandler(logging.Handler):
    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self.conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        # The parent gone means nothing to report to.
        with contextlib.suppress(Exception):
            self.conn.send(("log", record.levelno, record.getMessage()))


def _child_main(conn: Connection, entrypoint: str, task_json: str, fields: ChildContext) -> None:
    """The child process: rebuild the context, run the function, send its outcome or its error."""
    # Imported here: the parent imports this module from the runtime.
    from shardq.worker.context import TaskContext
    from shardq.worker.entrypoints import EntrypointError, resolve
    from shardq.worker.reduce import InputModel, ModelError

    # Ctrl-C reaches the whole process group: the worker decides when its tasks stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    task = ShardTask.from_json(task_json)
    child_log = logging.getLogger("shardq.task")
    child_log.handlers[:] = [_PipeHandler(conn)]
    child_log.setLevel(logging.DEBUG)
    child_log.propagate = False

    def fetch(uri: str) -> Path:
        conn.send(("fetch", uri))
        kind, answer = conn.recv()
        if kind != "path":
            raise RuntimeError(f"fetch {uri} failed in the worker: {answer}")
        return Path(answer)

    def ask(question: tuple[Any, ...]) -> Any:
        conn.send(question)
        return conn.recv()[1]

    class PipeStop:
        def is_set(self) -> bool:
            return bool(ask(("should_stop",)))

    ctx = TaskContext(
        data=fields.data,
        work_dir=Path(fields.work_dir),
        output_dir=Path(fields.output_dir),
        init_model_path=Path(fields.init_model_path) if fields.init_model_path else None,
        logger=logging.LoggerAdapter(child_log, {}),
        fetch=fetch,
        progress_sink=lambda fraction: conn.send(("progress", fraction)),
        input_models=[InputModel(Path(p), n) for p, n in fields.input_models],
        device=fields.device,
        proximal_mu=fields.proximal_mu,
        strategy=fields.strategy,
        eval_dataset=fields.eval_dataset,
        checkpoint_dir=Path(fields.checkpoint_dir) if fields.checkpoint_dir else None,
        resume_path=Path(fields.resume_path) if fields.resume_path else None,
        resume_step=fields.resume_step,
        stop_flags=PipeStop(),
        checkpoint_sink=lambda step, src: bool(ask(("checkpoint", step, str(src)))),
    )
    try:
        fn = resolve(entrypoint, task.task_type, AllowList(tuple(fields.allow)))
        if fn is None:
            raise AttributeError(f"entrypoint {entrypoint!r} has no {task.task_type} function")
        outcome = dict(fn(task, ctx) or {})
        conn.send(("done", outcome, str(ctx.model_path) if ctx.model_path is not None else None))
    except Stopped:
        conn.send(("stopped",))
    except BaseException as exc:
        permanent = isinstance(exc, EntrypointError | ModelError)
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}", permanent))
    finally:
        conn.close()


def run_isolated(
    entrypoint: str,
    task: ShardTask,
    ctx: Any,
    timeout_s: float,
    abandoned: threading.Event | None = None,
    *,
    allow: AllowList,
) -> dict[str, Any]:
    """Run ``entrypoint``'s function for ``task`` in a child process, stopped after ``timeout_s``.

    ``allow`` is the worker's allow-list (``shardq.worker.trust``); the child imports nothing outside it.

    ``ctx`` is the parent's ``TaskContext``: the child's fetches, progress and log lines go
    through it, and ``ctx.model_path`` takes the child's choice.

    Returns
    -------
    dict
        The function's outcome (metrics, num_samples, ...).

    Raises
    ------
    TaskTimeout
        Past ``timeout_s``: the child was killed.
    TaskAbandonedInChild
        ``abandoned`` was set (shutdown): the child was killed.
    IsolatedTaskError
        The function raised, or the child died without an answer (exit code in the message).
    """
    fields = ChildContext(
        data=dict(ctx.data),
        work_dir=str(ctx.work_dir),
        output_dir=str(ctx.output_dir),
        init_model_path=str(ctx.init_model_path) if ctx.init_model_path else None,
        input_models=[(str(p), int(n)) for p, n in ctx.input_models],
        device=ctx.device,
        proximal_mu=ctx.proximal_mu,
        strategy=dict(ctx.strategy),
        eval_dataset=ctx.eval_dataset,
        allow=allow.patterns,
        checkpoint_dir=str(ctx.checkpoint_dir) if ctx.checkpoint_dir else None,
        resume_path=str(ctx.resume_path) if ctx.resume_path else None,
        resume_step=ctx.resume_step,
    )
    # A private socket pair (no listener to wait on if the child dies early); the child gets its end
    # as an inherited file descriptor.
    ours, theirs = socket.socketpair()
    process = subprocess.Popen(
        [sys.executable, "-m", "shardq.worker.isolation", str(theirs.fileno())],
        pass_fds=(theirs.fileno(),),
        env={**os.environ, "PYTHONPATH": _child_path()},
    )
    theirs.close()  # the parent's copy: EOF on ``conn`` then means the child is gone
    conn = Connection(ours.detach())
    answered = False
    try:
        conn.send((entrypoint, task.to_json(), asdict(fields)))
        outcome = _serve(process, conn, ctx, time.monotonic() + timeout_s, timeout_s, abandoned)
        answered = True
        return outcome
    except IsolatedTaskError:
        answered = True
        raise
    finally:
        _stop(process, answered)
        conn.close()


def _child_path() -> str:
    """The worker's import path for the child (the entrypoint imports there as it would here)."""
    return os.pathsep.join(p or os.getcwd() for p in sys.path)


def _serve(
    process: subprocess.Popen[bytes],
    conn: Connection,
    ctx: Any,
    deadline: float,
    timeout_s: float,
    abandoned: threading.Event | None,
) -> dict[str, Any]:
    """Answer the child until it reports; stop it at the deadline or when the task is abandoned."""
    while True:
        if abandoned is not None and abandoned.is_set():
            raise TaskAbandonedInChild("the worker gave the task up while it ran")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TaskTimeout(
                f"the task ran past task_timeout_seconds={timeout_s:g} and was stopped (its process "
                "killed); raise task_timeout_seconds in the request, or split the data into more "
                "shards (sharding.shard_count) so each task finishes in time"
            )
        try:
            ready = conn.poll(min(left, POLL_S))
            message = conn.recv() if ready else None
        except (EOFError, OSError):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(EXIT_GRACE_S)
            raise IsolatedTaskError(
                f"the training process died without a result (exit code {process.poll()}): killed "
                "by the system (out of memory?) or crashed in native code",
                permanent=False,
            ) from None
        if message is None:
            continue
        kind = message[0]
        if kind == "progress":
            ctx.progress(float(message[1]))
        elif kind == "log":
            ctx.logger.log(int(message[1]), "%s", message[2])
        elif kind == "fetch":
            try:
                conn.send(("path", str(ctx.fetch(message[1]))))
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
        elif kind == "should_stop":
            conn.send(("stop", ctx.should_stop))
        elif kind == "checkpoint":
            try:
                saved = ctx.save_checkpoint(int(message[1]), Path(message[2]))
            except Exception as exc:
                ctx.logger.warning("checkpoint at step %s not saved: %s", message[1], exc)
                saved = False
            conn.send(("saved", saved))
        elif kind == "stopped":
            raise Stopped("the training function stopped on ctx.should_stop")
        elif kind == "done":
            if message[2] is not None:
                ctx.model_path = Path(message[2])
            return dict(message[1])
        elif kind == "error":
            raise IsolatedTaskError(message[1], permanent=bool(message[2]))


def _stop(process: subprocess.Popen[bytes], answered: bool) -> None:
    """Let a child that answered exit; stop one that did not (or did not exit in time) at once."""
    if answered:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(EXIT_GRACE_S)
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(EXIT_GRACE_S)
    if process.poll() is None:
        process.kill()
        process.wait()


def _main(fd: int) -> None:
    """The child's entry (``python -m shardq.worker.isolation FD``): take the task, run it."""
    conn = Connection(fd)
    entrypoint, task_json, fields = conn.recv()
    _child_main(conn, entrypoint, task_json, ChildContext(**fields))


if __name__ == "__main__":
    _main(int(sys.argv[1]))
