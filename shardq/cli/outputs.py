"""``shardq outputs``: the stack's outputs (queue URLs, function names, table, bucket, ...)."""

from __future__ import annotations

import argparse
import os

from shardq.cli.common import EXIT_OK, OUTPUTS_ENV, add_command, print_json, stack_outputs, table


def cmd_outputs(args: argparse.Namespace) -> int:
    """Print the stack's outputs."""
    outputs = stack_outputs(args)
    if args.json:
        print_json(outputs)
        return EXIT_OK
    source = os.environ.get(OUTPUTS_ENV) or f"stack {args.stack}"
    print(f"outputs of {source}" + (f" on {args.endpoint_url}" if args.endpoint_url else ""))
    print(table(sorted(outputs.items()), ("OUTPUT", "VALUE")))
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``outputs`` command."""
    p = add_command(
        sub,
        "outputs",
        help="the stack's outputs: queue URLs, function names, table, bucket, worker policy",
        example="  shardq outputs\n  shardq outputs --json > outputs.json   # usable as SHARDQ_OUTPUTS_JSON",
    )
    p.add_argument("--json", action="store_true", help="a JSON object of output key → value")
    p.set_defaults(func=cmd_outputs)
