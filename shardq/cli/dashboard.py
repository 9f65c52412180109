"""``shardq dashboard``: serve the read-only job dashboard on this machine.

It reads the job table, the bucket and the queues the stack's outputs name, with the same
credentials, region and endpoint as every other command, and serves a small web app on
127.0.0.1. Its packages (Starlette, uvicorn) are optional: ``make dashboard`` installs them.
"""

from __future__ import annotations

import argparse
import sys
import webbrowser

from shardq.cli.common import (
    EXIT_OK,
    CliError,
    add_command,
    aws_errors,
    describe_endpoint,
    require_output,
    session_client,
    stack_outputs,
)
from shardq.core.stall import DEFAULT_STALL_AFTER_S

DEFAULT_PORT = 8321
MISSING = (
    "the dashboard needs its optional packages ({missing}); install them with `make dashboard` "
    "(or .venv/bin/pip install -r requirements-dashboard.txt)"
)


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the dashboard until interrupted."""
    try:
        from shardq.dashboard.data import DashboardData
        from shardq.dashboard.server import bind, create_app, is_loopback, serve, url_of
    except ImportError as exc:
        raise CliError(MISSING.format(missing=exc.name or exc)) from None
    if args.refresh <= 0:
        raise CliError(f"--refresh must be a number of seconds > 0, got {args.refresh}")
    if args.stall_after <= 0:
        raise CliError(f"--stall-after must be a number of seconds > 0, got {args.stall_after:g}")
    outputs = stack_outputs(args)
    require_output(outputs, "JobTableName", args)
    data = DashboardData.from_outputs(outputs, lambda name: session_client(name, args))
    data.stall_after_s = args.stall_after
    with aws_errors(args):
        # Fail now, with the CLI's message and exit code, if the table cannot be read.
        data.store.list_jobs("RUNNING", limit=1)
    if not is_loopback(args.host):
        print(
            f"shardq: warning: serving on {args.host}: anyone who can reach this machine on port "
            f"{args.port} can read your jobs (read-only, no authentication); keep the default "
            "127.0.0.1 unless you mean it",
            file=sys.stderr,
        )
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        raise CliError(
            f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); "
            "pick another --port (0: any free one)"
        ) from None
    app = create_app(data, host=args.host, refresh_s=args.refresh, source=describe_endpoint(args))
    url = url_of(sock)
    print(f"shardq dashboard on {url} (read-only; {describe_endpoint(args)}); Ctrl-C stops it", flush=True)
    if args.open:
        webbrowser.open(url)
    serve(app).run(sockets=[sock])
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``dashboard`` command."""
    p = add_command(
        sub,
        "dashboard",
        help="serve a read-only web dashboard of the jobs (127.0.0.1; make dashboard installs it)",
        example="  shardq dashboard --open\n  shardq dashboard --endpoint-url http://127.0.0.1:4566 --port 0",
    )
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: a free one)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to serve on (default 127.0.0.1); another one exposes the jobs to the network",
    )
    p.add_argument("--refresh", type=float, default=2.0, help="seconds between page refreshes (default 2)")
    p.add_argument("--open", action="store_true", help="open the dashboard in the default browser")
    p.add_argument(
        "--stall-after",
        type=float,
        default=DEFAULT_STALL_AFTER_S,
        metavar="SECONDS",
        help="flag a running job with no result for this long while tasks are in flight or results "
        f"sit in a DLQ (default {DEFAULT_STALL_AFTER_S:g})",
    )
    p.set_defaults(func=cmd_dashboard)
