"""Helpers every shardq command shares: clients, stack outputs, errors, output formatting."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

DEFAULT_STACK = "shardq"
# A JSON object with the stack's output keys (TaskQueueUrl, JobTableName, ...), read instead of
# CloudFormation when set, e.g. one saved with ``shardq outputs --json > FILE``.
OUTPUTS_ENV = "SHARDQ_OUTPUTS_JSON"

# Exit codes (docs/CLI.md): every command returns one of these.
EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_AWS = 4


class CliError(RuntimeError):
    """A user-facing error: one sentence with the fix, printed without a traceback.

    ``code`` is the exit code (2, usage or validation, unless said otherwise).
    """

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class NotFoundError(CliError):
    """A job, stack, output or result that does not exist (exit 3)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_NOT_FOUND)


class AwsError(CliError):
    """AWS or the endpoint refused or could not be reached (exit 4)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_AWS)


def session_client(service: str, args: argparse.Namespace) -> Any:
    """A boto3 client for ``service`` honouring --region and --endpoint-url (the core's factory)."""
    from shardq.core.clients import new_client

    # Few, short retries: a person at a terminal wants "cannot reach" in seconds, not a minute.
    return new_client(
        service,
        region=args.region,
        endpoint_url=args.endpoint_url,
        max_attempts=3,
        read_timeout=60,
        max_pool_connections=32,
    )


def stack_outputs(args: argparse.Namespace) -> dict[str, str]:
    """The stack's outputs by key (TaskQueueUrl, ResultsQueueUrl, JobTableName, ...).

    Read from the file named by ``SHARDQ_OUTPUTS_JSON`` when set, else from CloudFormation.
    """
    path = os.environ.get(OUTPUTS_ENV)
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise CliError(
                f"cannot read outputs file {path} ({exc}); fix the file or unset {OUTPUTS_ENV}"
            ) from exc
        if not isinstance(data, dict):
            raise CliError(f"outputs file {path} must hold a JSON object of output key → value")
        return {str(k): str(v) for k, v in data.items()}
    cfn = session_client("cloudformation", args)
    try:
        stacks = cfn.describe_stacks(StackName=args.stack)["Stacks"]
    except Exception as exc:
        if _is_client_error(exc) and "does not exist" in str(exc):
            raise NotFoundError(
                f"stack '{args.stack}' does not exist on {describe_endpoint(args)}; deploy it (make deploy, "
                f"or shardq local up) or pass --stack NAME / SHARDQ_STACK, or {OUTPUTS_ENV}=FILE"
            ) from exc
        raise translate_aws_error(exc, args) from exc
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


def require_output(outputs: dict[str, str], key: str, args: argparse.Namespace) -> str:
    """One output by key, or a NotFoundError naming the stack and the fix."""
    value = outputs.get(key)
    if not value:
        source = os.environ.get(OUTPUTS_ENV) or f"stack '{args.stack}'"
        raise NotFoundError(
            f"{source} has no output {key}; redeploy the stack (or add {key} to the outputs file)"
        )
    return value


def describe_endpoint(args: argparse.Namespace) -> str:
    """Where requests go, for error messages."""
    if args.endpoint_url:
        return str(args.endpoint_url)
    # boto3 reads AWS_DEFAULT_REGION (botocore 1.43 ignores AWS_REGION): name the region it uses.
    region = args.region or os.environ.get("AWS_DEFAULT_REGION")
    return f"AWS ({region or 'default region'})"


def _local_endpoint(args: argparse.Namespace) -> bool:
    """True when the endpoint is on this machine: the local cloud (or something standing in for it)."""
    from urllib.parse import urlparse

    url = getattr(args, "endpoint_url", None)
    return bool(url) and (urlparse(str(url)).hostname or "") in ("127.0.0.1", "localhost", "::1")


def _local_env_hint(*names: str) -> str:
    """``NAME=value`` for the local cloud's region and dummy credentials (shardq.local.cloud's values)."""
    # The values, not an import: the local cloud's module must stay out of the CLI's AWS path.
    values = {"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    return " ".join(f"{n}={values[n]}" for n in names)


def region_hint(args: argparse.Namespace) -> str:
    """The no-region message: boto3 (botocore 1.43) reads AWS_DEFAULT_REGION, not AWS_REGION."""
    also = (
        f" (AWS_REGION={os.environ['AWS_REGION']} is set, but boto3 reads AWS_DEFAULT_REGION)"
        if os.environ.get("AWS_REGION") and not os.environ.get("AWS_DEFAULT_REGION")
        else ""
    )
    if _local_endpoint(args):
        return (
            f"no AWS region configured{also}; the local cloud at {args.endpoint_url} serves us-east-1: "
            f"export {_local_env_hint('AWS_DEFAULT_REGION')} or pass --region us-east-1 "
            '(or eval "$(shardq local env)", which sets all it needs)'
        )
    return (
        f"no AWS region configured{also}; pass --region or set AWS_DEFAULT_REGION "
        "(or region in ~/.aws/config)"
    )


def _is_client_error(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError)


def translate_aws_error(exc: BaseException, args: argparse.Namespace) -> CliError:
    """A botocore exception → one sentence with the fix (exit 4); other exceptions pass as they are."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        ReadTimeoutError,
    )

    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        url = getattr(exc, "kwargs", {}).get("endpoint_url") or describe_endpoint(args)
        return AwsError(
            f"cannot reach {url}: {exc}; start the local cloud (shardq local up) or fix --endpoint-url / "
            "AWS_ENDPOINT_URL (unset it to use AWS)"
        )
    if isinstance(exc, ReadTimeoutError):
        return AwsError(
            f"{describe_endpoint(args)} did not answer in time ({exc}); retry, or check the endpoint"
        )
    if isinstance(exc, NoCredentialsError):
        if _local_endpoint(args):
            return AwsError(
                f"no AWS credentials found; the local cloud at {args.endpoint_url} accepts any: "
                f"export {_local_env_hint('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY')} "
                '(or eval "$(shardq local env)", which sets all it needs)'
            )
        return AwsError(
            "no AWS credentials found; set AWS_PROFILE (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), "
            "or point --endpoint-url / AWS_ENDPOINT_URL at the local cloud"
        )
    if isinstance(exc, NoRegionError):
        return AwsError(region_hint(args))
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code, message = err.get("Code", "Error"), err.get("Message", str(exc))
        op = getattr(exc, "operation_name", "the request")
        return AwsError(
            f"{describe_endpoint(args)} refused {op}: {code}: {message}; check the credentials' permissions "
            "and the stack (shardq outputs)"
        )
    raise exc


@contextmanager
def aws_errors(args: argparse.Namespace) -> Iterator[None]:
    """Turn botocore exceptions raised inside into CliErrors with exit code 4."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise translate_aws_error(exc, args) from exc


def common_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The options every command takes; at the top level with defaults, on commands suppressed.

    Suppressed defaults let ``shardq status JOB --endpoint-url URL`` and
    ``shardq --endpoint-url URL status JOB`` mean the same.
    """

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--stack", default=default(os.environ.get("SHARDQ_STACK", DEFAULT_STACK)), help="stack name"
    )
    parser.add_argument("--region", default=default(None), help="AWS region (default: the AWS chain)")
    parser.add_argument(
        "--endpoint-url",
        default=default(os.environ.get("AWS_ENDPOINT_URL")),
        help="endpoint, e.g. the local cloud's (default: AWS_ENDPOINT_URL)",
    )
    parser.add_argument(
        "--debug", action="store_true", default=default(False), help="show tracebacks of errors"
    )


def command_parent() -> argparse.ArgumentParser:
    """A parent parser giving a command the common options."""
    parent = argparse.ArgumentParser(add_help=False)
    common_options(parent, top=False)
    return parent


def add_command(
    sub: argparse._SubParsersAction, name: str, *, help: str, example: str, description: str | None = None
) -> argparse.ArgumentParser:
    """A command's parser with the common options and an example in its ``--help``."""
    return sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=f"example:\n{example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[command_parent()],
    )


# -- output ---------------------------------------------------------------------------------

COLOURS = {"red": "31", "green": "32", "yellow": "33", "blue": "34", "dim": "2", "bold": "1"}
STATUS_COLOURS = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "CANCELLED": "yellow",
    "RUNNING": "blue",
    "WAITING": "dim",  # a pipeline job waiting for the job it follows
}


@dataclass(frozen=True)
class Painted:
    """A table cell shown in ``colour`` on a terminal and as plain ``text`` everywhere else."""

    text: str
    colour: str

    def __str__(self) -> str:
        return self.text


def use_colour(stream: IO[str] | None = None) -> bool:
    """Colours only on a terminal, and never with NO_COLOR set (https://no-color.org) or TERM=dumb."""
    stream = stream or sys.stdout
    if "NO_COLOR" in os.environ or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def paint(text: str, colour: str, stream: IO[str] | None = None) -> str:
    """``text`` in ``colour`` when the stream takes colours."""
    if not use_colour(stream) or colour not in COLOURS:
        return text
    return f"\033[{COLOURS[colour]}m{text}\033[0m"


def paint_status(status: str, stream: IO[str] | None = None) -> str:
    """A job status in its colour."""
    return paint(status, STATUS_COLOURS.get(status, "bold"), stream)


def status_cell(status: str) -> Painted:
    """A job status as a table cell, coloured on a terminal."""
    return Painted(status, STATUS_COLOURS.get(status, "bold"))


def print_json(data: Any, stream: IO[str] | None = None) -> None:
    """JSON for scripts: indented, keys sorted, one document, standard JSON (a non-finite number is
    written as the string "nan", "inf" or "-inf": ``shardq.core.artifacts.standard``)."""
    from shardq.core.artifacts import dumps_standard

    print(dumps_standard(data, indent=2, sort_keys=True, default=str), file=stream or sys.stdout)


def terminal_console(stream: IO[str]) -> Any:
    """A ``rich`` console writing to ``stream``, a terminal (callers check ``use_colour`` first).

    Highlighting and emoji codes are off: job ids, URIs and error text are shown as they are.
    """
    from rich.console import Console

    return Console(file=stream, force_terminal=True, highlight=False, emoji=False)


def rich_text(value: Any) -> Any:
    """A cell or value as ``rich`` text: never parsed as markup (error text holds brackets)."""
    from rich.text import Text

    if isinstance(value, Painted):
        return Text(value.text, style=value.colour)
    text = "" if value is None else str(value)
    return Text.from_ansi(text) if "\033[" in text else Text(text)


def render(renderable: Any, stream: IO[str]) -> str:
    """What ``rich`` draws for ``renderable`` on the terminal ``stream``, as a string to print."""
    console = terminal_console(stream)
    with console.capture() as captured:
        console.print(renderable)
    return captured.get().rstrip("\n")


def table(
    rows: Sequence[Sequence[Any]],
    headers: Sequence[str],
    stream: IO[str] | None = None,
    *,
    title: str | None = None,
) -> str:
    """A table: drawn by ``rich`` when ``stream`` is a terminal, else plain text.

    The plain form (pipes, files, scripts) has left-aligned columns two spaces apart and no
    box drawing, the title on the line above; it does not change with ``rich``'s version.
    """
    if stream is not None and use_colour(stream):
        return render(_rich_table(rows, headers, title), stream)
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join([title, *lines] if title else lines)


def _rich_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], title: str | None) -> Any:
    """A ``rich.table.Table`` of the rows (its title above); columns of numbers are right-aligned."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i, header in enumerate(headers):
        values = [row[i] for row in rows if row[i] not in (None, "")]
        numeric = bool(values) and all(_is_number(v) for v in values)
        grid.add_column(str(header), justify="right" if numeric else "left", header_style="bold")
    for row in rows:
        grid.add_row(*(rich_text(c) for c in row))
    # The title on its own line, as in the plain form: a table's own title wraps to its width.
    return Group(Text(title, style="bold"), grid) if title else grid


def _is_number(value: Any) -> bool:
    if isinstance(value, Painted):
        value = value.text
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return False
        return True
    return isinstance(value, int | float) and not isinstance(value, bool)


def fields(pairs: Sequence[tuple[str, Any]], stream: IO[str] | None = None) -> str:
    """``key: value`` lines with aligned values, skipping empty values; keys bold on a terminal."""
    shown = [(k, v) for k, v in pairs if v not in (None, "")]
    width = max((len(k) for k, _ in shown), default=0)
    keys = [paint((k + ":").ljust(width + 1), "bold", stream) for k, _ in shown]
    return "\n".join(f"{key} {v}" for key, (_, v) in zip(keys, shown, strict=True))


def duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``12.3s`` (``shardq.core.stall.span``); ``--`` when unknown."""
    from shardq.core.stall import span

    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "--"
    return span(seconds)


def settings_from_outputs(outputs: dict[str, str], args: argparse.Namespace) -> Any:
    """The Lambdas' settings, read from the stack's outputs (``Settings.from_outputs``).

    Every field the Lambdas get from their environment (the job TTL, the readable buckets,
    maxReceiveCount, ...) comes from the outputs too, so the CLI's engine finalizes, retries and
    validates as the Lambdas do. A missing or malformed output is a NotFoundError (exit 3).
    """
    from shardq.core.settings import Settings, SettingsError

    try:
        return Settings.from_outputs(outputs)
    except SettingsError as exc:
        source = os.environ.get(OUTPUTS_ENV) or f"stack '{args.stack}'"
        raise NotFoundError(f"{source}: {exc}") from None


def engine_for(args: argparse.Namespace, outputs: dict[str, str] | None = None) -> Any:
    """The coordination engine over the stack's resources, with this command's clients.

    A big map round's close (a cancel's) is handed to the stack's splitter, one asynchronous
    invocation per range, as the aggregator does; without a splitter (resources made by hand) the
    ranges run here, one after another.
    """
    from shardq.core.advance import lambda_range_dispatch
    from shardq.core.engine import Engine

    settings = settings_from_outputs(outputs if outputs is not None else stack_outputs(args), args)
    dispatch = None
    if settings.splitter_function:
        dispatch = lambda_range_dispatch(session_client("lambda", args), settings.splitter_function)
    return Engine(
        settings=settings,
        ddb=session_client("dynamodb", args),
        sqs=session_client("sqs", args),
        s3=session_client("s3", args),
        events=session_client("events", args),
        dispatch_ranges=dispatch,
    )


def get_job(engine: Any, job_id: str) -> Any:
    """The job record, or NotFoundError (exit 3) naming the table and the fix."""
    from shardq.core.jobstore import JobNotFound

    try:
        return engine.store.get_job(job_id)
    except JobNotFound:
        raise NotFoundError(
            f"no job '{job_id}' in table {engine.settings.job_table}; check the id with `shardq list` "
            "(and --stack / --endpoint-url if it ran elsewhere)"
        ) from None
