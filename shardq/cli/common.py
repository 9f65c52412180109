"""Helpers every shardq command shares: clients, stack outputs, errors, output formatting."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from typing import Any

DEFAULT_STACK = "shardq"


class CliError(RuntimeError):
    """A user-facing error: printed without a traceback, exit code 2."""


def session_client(service: str, args: argparse.Namespace) -> Any:
    """A boto3 client for ``service`` honouring --region and --endpoint-url."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session(region_name=args.region).client(
        service,
        endpoint_url=args.endpoint_url,
        config=Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32),
    )


def stack_outputs(args: argparse.Namespace) -> dict[str, str]:
    """The stack's outputs by key (TaskQueueUrl, ResultsQueueUrl, JobTableName, ...)."""
    cfn = session_client("cloudformation", args)
    try:
        stacks = cfn.describe_stacks(StackName=args.stack)["Stacks"]
    except Exception as exc:
        raise CliError(
            f"cannot read stack '{args.stack}': {exc}. Deploy it (make deploy, or shardq local up) or pass "
            "--stack NAME / SHARDQ_STACK, or give the queue URLs directly"
        ) from exc
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


def gpu_count() -> int:
    """GPUs this machine offers (CUDA_VISIBLE_DEVICES, else nvidia-smi), at least 1 slot."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return max(1, len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"]))
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
            return max(1, sum(1 for line in out.splitlines() if line.startswith("GPU ")))
        except (OSError, subprocess.SubprocessError):
            return 1
    return 1
