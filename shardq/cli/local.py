"""``shardq local up``: the local cloud with the real stack deployed into it.

Starts ministack on 127.0.0.1, deploys the CDK app with the pinned CDK CLI, prints one
JSON line (``endpoint_url``, ``region``, ``stack_name``, ``outputs``, ``state_dir``,
``pid``), and serves until SIGINT/SIGTERM, then stops everything it started. A second
``up`` on the state dir of a live one prints the same line and leaves it running.

Example::

    shardq local up --state-dir .shardq/local &
    export AWS_ENDPOINT_URL=$(head -1 .shardq/local/up.json | jq -r .endpoint_url)
    aws lambda invoke --function-name "$(jq -r .outputs.SplitterFunctionName .shardq/local/up.json)" ...
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from shardq.cli.common import CliError

INFO_FILE = "up.json"


def _alive(info: dict[str, Any]) -> bool:
    from shardq.local.cloud import LocalCloud

    try:
        os.kill(int(info["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return False
    return LocalCloud(port=int(info["endpoint_url"].rsplit(":", 1)[1])).healthy()


def cmd_up(args: argparse.Namespace) -> int:
    """Start (or reuse) the local cloud and deploy the stack into it."""
    from shardq.local.cloud import REGION, LocalCloud
    from shardq.local.deploy import DeployError, deploy_stack

    state_dir = Path(args.state_dir).resolve() if args.state_dir else None
    if state_dir is not None and (state_dir / INFO_FILE).is_file():
        info = json.loads((state_dir / INFO_FILE).read_text())
        if _alive(info):
            print(json.dumps({**info, "reused": True}), flush=True)
            return 0
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
        }
        if state_dir is not None:
            (state_dir / INFO_FILE).write_text(json.dumps(info))
            (state_dir / "outputs.json").write_text(json.dumps(outputs, indent=2))
        print(json.dumps(info), flush=True)
        print(f"deployed in {seconds} s; serving until Ctrl-C / SIGTERM", file=sys.stderr, flush=True)
        while not stop.wait(1.0):
            if cloud.process is None or cloud.process.poll() is not None:
                raise CliError("the local cloud exited unexpectedly; see ministack.log in the state dir")
        return 0
    finally:
        cloud.stop()
        if state_dir is not None:
            (state_dir / INFO_FILE).unlink(missing_ok=True)
        print("local cloud stopped", file=sys.stderr, flush=True)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``local`` command group."""
    local = sub.add_parser(
        "local",
        help="the embedded local cloud",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = local.add_subparsers(dest="verb", required=True)
    up = verbs.add_parser("up", help="start the local cloud and deploy the stack into it")
    up.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    up.add_argument("--state-dir", default=None, help="keep state and up.json here (default: a temp dir)")
    up.set_defaults(func=cmd_up)
