"""``shardq local up|status|env|down``: the local cloud with the real stack deployed into it.

``up`` starts ministack on 127.0.0.1, deploys the CDK app with the pinned CDK CLI, records itself
in a run file (``.shardq/local.json`` in this directory; ``--run-file`` / SHARDQ_LOCAL_RUN_FILE),
prints one JSON line (``endpoint_url``, ``region``, ``stack_name``, ``outputs``, ``state_dir``,
``pid``) and the environment that reaches it, and serves until SIGINT/SIGTERM, then stops
everything it started. ``--detach`` serves in the background and prints only the environment,
as ``export`` lines. A second ``up`` while one runs prints the same and starts nothing.

Example::

    eval "$(shardq local up --detach --env-file .shardq/local.env)"
    shardq outputs
    shardq local status
    shardq local down
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from shardq.cli.common import EXIT_AWS, EXIT_NOT_FOUND, EXIT_OK, CliError, fields, print_json
from shardq.local import run

INFO_FILE = "up.json"
# Seconds ``up --detach`` waits for the background ``up`` to deploy: ≈ 25 s idle, several times
# that on two busy cores.
DETACH_TIMEOUT = 600.0


def _announce_env(info: dict[str, Any], env_file: str | None) -> dict[str, str]:
    """Write ``--env-file`` if asked; return the environment."""
    env = run.environment(info)
    if env_file:
        run.write_env_file(Path(env_file), env)
        run.record_env_file(info, Path(env_file))  # so that `local down` removes it
        print(f"environment written to {env_file} (load it with: . {env_file})", file=sys.stderr)
    return env


def _reusable(run_file: Path, state_dir: Path | None) -> dict[str, Any] | None:
    """A live local cloud recorded in the run file (or in ``--state-dir``'s up.json), else None."""
    candidates = [run.read_run_file(run_file)]
    if state_dir is not None:
        candidates.append(run.read_run_file(state_dir / INFO_FILE))
    for info in candidates:
        if info is not None and run.state(info) in ("running", "orphaned"):
            return info
    return None


def cmd_up(args: argparse.Namespace) -> int:
    """Start (or reuse) the local cloud and deploy the stack into it."""
    run_file = run.run_file_path(args.run_file)
    state_dir = Path(args.state_dir).resolve() if args.state_dir else None
    info = _reusable(run_file, state_dir)
    if info is not None:
        env = _announce_env(info, args.env_file)
        print(f"local cloud already running on {info['endpoint_url']} (pid {info['pid']})", file=sys.stderr)
        if args.detach:
            print(run.export_lines(env), end="", flush=True)
        else:
            print(json.dumps({**info, "reused": True}), flush=True)
        return EXIT_OK
    if args.detach:
        return _up_detached(args, run_file)
    return _up_foreground(args, run_file, state_dir)


def _up_foreground(args: argparse.Namespace, run_file: Path, state_dir: Path | None) -> int:
    from shardq.local.cloud import REGION, LocalCloud
    from shardq.local.deploy import DeployError, deploy_stack

    cloud = LocalCloud(port=args.port or 0, state_dir=state_dir)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)
    try:
        cloud.start()
        print(
            f"local cloud on {cloud.endpoint_url}; deploying stack '{args.stack}'...",
            file=sys.stderr,
            flush=True,
        )
        try:
            outputs = deploy_stack(cloud, stack_name=args.stack)
        except DeployError as exc:
            raise CliError(str(exc)) from exc
        seconds = outputs.pop("_deploy_seconds", "?")
        assert cloud.process is not None
        info = {
            "endpoint_url": cloud.endpoint_url,
            "region": REGION,
            "stack_name": args.stack,
            "outputs": outputs,
            "state_dir": str(cloud.state_dir),
            "pid": cloud.process.pid,
            "up_pid": os.getpid(),
            "run_file": str(run_file),
        }
        if state_dir is not None:
            (state_dir / INFO_FILE).write_text(json.dumps(info))
            (state_dir / "outputs.json").write_text(json.dumps(outputs, indent=2))
        env = _announce_env(info, args.env_file)
        # Last, so that a reader that sees the run file finds the env file written too.
        run.write_run_file(run_file, info)
        print(json.dumps(info), flush=True)
        print(
            f"deployed in {seconds} s; serving until Ctrl-C / SIGTERM (or `shardq local down`).\n"
            "To use it from another shell:\n" + run.export_lines(env),
            file=sys.stderr,
            end="",
            flush=True,
        )
        while not stop.wait(1.0):
            if cloud.process is None or cloud.process.poll() is not None:
                raise CliError("the local cloud exited unexpectedly; see ministack.log in the state dir")
        return EXIT_OK
    finally:
        cloud.stop()
        run.remove_run_file(run_file, os.getpid())
        if state_dir is not None:
            (state_dir / INFO_FILE).unlink(missing_ok=True)
        print("local cloud stopped", file=sys.stderr, flush=True)


def _up_detached(args: argparse.Namespace, run_file: Path) -> int:
    """Run ``local up`` in the background (its own session, output to a log beside the run file).

    Waits until it has recorded itself in the run file, then prints the environment as ``export``
    lines on stdout, for ``eval "$(shardq local up --detach)"``.
    """
    log_path = run_file.with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "shardq.cli",
        "--stack",
        args.stack,
        "local",
        "up",
        "--run-file",
        str(run_file),
    ]
    if args.port:
        cmd += ["--port", str(args.port)]
    if args.state_dir:
        cmd += ["--state-dir", str(Path(args.state_dir).resolve())]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    print(f"starting the local cloud in the background (log: {log_path})...", file=sys.stderr, flush=True)
    deadline = time.monotonic() + args.timeout
    while True:
        info = run.read_run_file(run_file)
        if info is not None and info.get("up_pid") == proc.pid:
            break
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise CliError(
                f"shardq local up exited with code {proc.returncode} before serving; its log:\n{tail}"
            )
        if time.monotonic() > deadline:
            proc.terminate()  # the process this command started; it stops its local cloud
            raise CliError(
                f"the local cloud did not deploy within {args.timeout:.0f} s (see {log_path}); "
                "retry with a longer --timeout on a busy machine"
            )
        time.sleep(0.5)
    env = _announce_env(info, args.env_file)
    print(
        f"local cloud on {info['endpoint_url']} (pid {info['pid']}), stack '{info['stack_name']}' deployed; "
        "stop it with `shardq local down`",
        file=sys.stderr,
    )
    print(run.export_lines(env), end="", flush=True)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Say whether the recorded local cloud runs; exit 0 when it serves, 3 when none, 4 unhealthy."""
    run_file = run.run_file_path(args.run_file)
    info = run.read_run_file(run_file)
    state = run.state(info)
    if args.json:
        print_json({"state": state, "run_file": str(run_file), **(info or {})})
    elif info is None:
        print(
            f"not running (no local cloud recorded in {run_file}); start one with `shardq local up --detach`"
        )
    elif state == "stopped":
        print(
            f"not running: the local cloud recorded in {run_file} ({info.get('endpoint_url')}) has stopped; "
            "`shardq local down` removes its stale run and env files"
        )
    else:
        print(
            fields(
                [
                    ("state", state),
                    ("endpoint", info.get("endpoint_url")),
                    ("stack", info.get("stack_name")),
                    ("outputs", len(info.get("outputs") or {})),
                    ("local up pid", info.get("up_pid")),
                    ("local cloud pid", info.get("pid")),
                    ("state dir", info.get("state_dir")),
                    ("run file", str(run_file)),
                ],
                sys.stdout,
            )
        )
    return {"running": EXIT_OK, "orphaned": EXIT_OK, "unhealthy": EXIT_AWS}.get(state, EXIT_NOT_FOUND)


def cmd_env(args: argparse.Namespace) -> int:
    """Print the recorded local cloud's environment as ``export`` lines (exit 3 when none runs)."""
    run_file = run.run_file_path(args.run_file)
    info = run.read_run_file(run_file)
    if info is None or run.state(info) == "stopped":
        raise CliError(
            f"no running local cloud recorded in {run_file}; start one with `shardq local up --detach`",
            EXIT_NOT_FOUND,
        )
    env = _announce_env(info, args.env_file)
    print(run.export_lines(env), end="")
    return EXIT_OK


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the recorded local cloud (only the processes ``up`` started); nothing running is fine."""
    run_file = run.run_file_path(args.run_file)
    info = run.read_run_file(run_file)
    if info is None:
        print(f"no local cloud recorded in {run_file}; nothing to stop", file=sys.stderr)
        return EXIT_OK
    stopped = run.stop(run_file, info, timeout=args.timeout)
    print(
        f"stopped {', '.join(stopped)}" if stopped else "nothing was running (removed the stale run file)",
        file=sys.stderr,
    )
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``local`` command group."""
    local = sub.add_parser(
        "local",
        help="the embedded local cloud",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = local.add_subparsers(dest="verb", required=True)

    def run_file_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--run-file",
            default=None,
            help=f"where `up` records itself (default: ${run.RUN_FILE_ENV} or {run.DEFAULT_RUN_FILE})",
        )

    def env_file_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--env-file", default=None, help="also write the environment to this file, as `export` lines"
        )

    up = verbs.add_parser("up", help="start the local cloud and deploy the stack into it")
    up.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    up.add_argument("--state-dir", default=None, help="keep state and up.json here (default: a temp dir)")
    up.add_argument("--detach", action="store_true", help="serve in the background; print `export` lines")
    up.add_argument(
        "--timeout", type=float, default=DETACH_TIMEOUT, help="with --detach: seconds to wait for the deploy"
    )
    run_file_option(up)
    env_file_option(up)
    up.set_defaults(func=cmd_up)

    status = verbs.add_parser("status", help="is the local cloud running? where? (exit 0 yes, 3 no)")
    status.add_argument("--json", action="store_true", help="one JSON object")
    run_file_option(status)
    status.set_defaults(func=cmd_status)

    env = verbs.add_parser("env", help="the running local cloud's environment, as `export` lines")
    run_file_option(env)
    env_file_option(env)
    env.set_defaults(func=cmd_env)

    down = verbs.add_parser("down", help="stop the local cloud that `up` started")
    down.add_argument("--timeout", type=float, default=30.0, help="seconds before SIGKILL")
    run_file_option(down)
    down.set_defaults(func=cmd_down)
