"""The ``shardq`` command line: one entry point for AWS and the local cloud.

Every command finds the stack by ``--stack`` / ``SHARDQ_STACK`` (default ``shardq``),
credentials and region by the standard AWS chain, and the endpoint by ``--endpoint-url`` /
``AWS_ENDPOINT_URL`` (the local cloud prints it). Each command lives in its own module and
registers itself here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from shardq.cli import local, worker
from shardq.cli.common import DEFAULT_STACK, CliError

COMMAND_MODULES = (worker, local)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="shardq", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stack", default=os.environ.get("SHARDQ_STACK", DEFAULT_STACK), help="stack name")
    parser.add_argument("--region", default=None, help="AWS region (default: the AWS chain)")
    parser.add_argument(
        "--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"), help="endpoint, e.g. the local cloud's"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shardq`` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"shardq: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
