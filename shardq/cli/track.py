"""The ``track`` command: write a job into an MLflow tracking server (``shardq.cli.mlflow_writer``).

``shardq track JOB --mlflow URI`` writes what the job has recorded so far, once (run it again
later, or use ``shardq watch JOB --mlflow URI`` to follow a running job: it writes after every
poll). Nothing is written twice. MLflow is optional: without it the command exits 2 naming
``make mlflow``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from shardq.cli.common import EXIT_OK, AwsError, CliError, add_command, aws_errors, engine_for, get_job

MLFLOW_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_EXPERIMENT = "shardq"


def tracking_uri(args: argparse.Namespace) -> str | None:
    """``--mlflow``, else MLflow's own ``MLFLOW_TRACKING_URI``, else None."""
    return getattr(args, "mlflow", None) or None


def new_tracker(args: argparse.Namespace, engine: Any) -> Any:
    """A callable ``(job) -> SyncStats`` writing the job to ``--mlflow`` (CliError when unusable)."""
    from shardq.cli.mlflow_writer import JobReader, MlflowMissing, MlflowWriter

    uri = tracking_uri(args)
    if not uri:
        raise CliError(f"--mlflow URI is required (or set {MLFLOW_ENV}), e.g. --mlflow http://127.0.0.1:5000")
    try:
        writer = MlflowWriter(uri, experiment=args.experiment)
    except MlflowMissing as exc:
        raise CliError(str(exc)) from None
    reader = JobReader(engine)

    def track(job: Any) -> Any:
        try:
            return writer.sync(job, reader)
        except Exception as exc:
            if type(exc).__module__.startswith(("mlflow", "requests", "urllib3")):
                raise AwsError(
                    f"MLflow tracking server {uri} refused or could not be reached: "
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                    "(check the URI and that the server runs)"
                ) from None
            raise

    return track


def cmd_track(args: argparse.Namespace) -> int:
    """Write a job (its runs, steps, params and artifacts) into MLflow, adding only what is new."""
    engine = engine_for(args)
    track = new_tracker(args, engine)
    with aws_errors(args):
        job = get_job(engine, args.job)
        stats = track(job)
    where = f"{tracking_uri(args)} experiment '{args.experiment}'"
    print(f"{args.job} ({job.kind}, {job.status}) → {where}: {stats.text()}")
    if not job.terminal:
        follow = f"shardq watch {args.job} --mlflow URI"
        print(f"the job is {job.status}: run again later, or follow it with `{follow}`")
    sys.stdout.flush()
    return EXIT_OK


def add_mlflow_options(p: argparse.ArgumentParser, *, env_default: bool = True) -> None:
    """``--mlflow URI`` and ``--experiment NAME`` (``track``; ``watch`` without the env default,
    so a plain ``watch`` never writes to MLflow because a variable happens to be set)."""
    p.add_argument(
        "--mlflow",
        metavar="URI",
        default=os.environ.get(MLFLOW_ENV) if env_default else None,
        help=(
            f"MLflow tracking URI (default ${MLFLOW_ENV})"
            if env_default
            else "also write the job into this MLflow tracking server after every poll"
        )
        + "; needs `make mlflow`",
    )
    p.add_argument(
        "--experiment",
        default=DEFAULT_EXPERIMENT,
        help=f"MLflow experiment the runs go to (created if missing; default '{DEFAULT_EXPERIMENT}')",
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``track`` command."""
    p = add_command(
        sub,
        "track",
        help="write a job into an MLflow tracking server (runs, metrics per round/rung, artifacts)",
        example="  shardq track JOB --mlflow http://127.0.0.1:5000\n"
        "  shardq watch JOB --mlflow http://127.0.0.1:5000   # follow a running job",
    )
    p.add_argument("job", help="job id")
    add_mlflow_options(p)
    p.set_defaults(func=cmd_track)
