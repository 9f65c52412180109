"""The ``shardq`` command line: one entry point for AWS and the local cloud.

Every command finds the stack by ``--stack`` / ``SHARDQ_STACK`` (default ``shardq``), or the
outputs file named by ``SHARDQ_OUTPUTS_JSON``; credentials and region by the standard AWS
chain; the endpoint by ``--endpoint-url`` / ``AWS_ENDPOINT_URL`` (the local cloud prints it).
Each command lives in its own module and registers itself here.

exit codes:
  0  ok
  1  the job failed or was cancelled (watch, submit/retry --wait, status --wait)
  2  usage or validation error
  3  not found (job, stack, output, result)
  4  AWS or endpoint error (unreachable, refused, no credentials)
  141  the reader of its output went away (`shardq list | head`): stopped quietly
  (an unexpected internal error also exits 1; --debug shows its traceback)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Sequence

from shardq.cli import dashboard, dlq, estimate, jobs, local, outputs, track, worker
from shardq.cli.common import CliError, common_options, translate_aws_error

COMMAND_MODULES = (jobs, dlq, estimate, outputs, worker, local, dashboard, track)
# 128 + SIGPIPE: what a shell reports for a program whose reader closed the pipe.
EXIT_BROKEN_PIPE = 141


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="shardq", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shardq`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe fails here, inside the handler below, not at exit
        return code
    except BrokenPipeError:
        # The reader went away (`shardq status JOB | head`): stop quietly, as `cat` would. Point
        # stdout at /dev/null so the interpreter's own flush at exit does not raise again.
        with contextlib.suppress(OSError, ValueError):  # no real descriptor (stdout replaced in-process)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("shardq: interrupted", file=sys.stderr)
        return 130
    except CliError as exc:
        if debug:
            traceback.print_exc()
        print(f"shardq: {exc}", file=sys.stderr)
        return exc.code
    except Exception as exc:
        if debug:
            traceback.print_exc()
        try:
            error = translate_aws_error(exc, args)
        except Exception:
            # Not an AWS error: a bug. Say so in one sentence; --debug shows where.
            print(
                f"shardq: unexpected error: {type(exc).__name__}: {exc} (run again with --debug for the "
                "traceback, and report it)",
                file=sys.stderr,
            )
            return 1
        print(f"shardq: {error}", file=sys.stderr)
        return error.code


if __name__ == "__main__":
    sys.exit(main())
