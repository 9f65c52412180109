"""The stack deployed once per session into the local cloud, and worker processes against it."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardq.local.cloud import LocalCloud
from shardq.local.deploy import cdk_env, context_args, deploy_stack, synthesize
from shardq.local.workers import start_workers, stop_workers

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def stack(cloud: LocalCloud) -> dict[str, str]:
    """The real CDK stack, deployed with the pinned CDK CLI into the session's local cloud."""
    outputs = deploy_stack(cloud)
    outputs.pop("_deploy_seconds")
    return outputs


@pytest.fixture(scope="session")
def template(cloud: LocalCloud, stack: dict[str, str]) -> dict[str, Any]:
    """The synthesized template that was deployed (its assembly is kept by content: no new synth)."""
    out = synthesize(cdk_env(cloud), context_args(), ROOT, 600)
    (path,) = [p for p in out.glob("*.template.json") if "Bootstrap" not in p.name]
    return dict(json.loads(path.read_text()))


@pytest.fixture(scope="module")
def workers(cloud: LocalCloud, stack: dict[str, str]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two ``shardq worker`` processes reading the stack's outputs, as on AWS."""
    assert cloud.state_dir is not None
    procs = start_workers(
        cloud.env(),
        2,
        log_dir=cloud.state_dir,
        name="e2e",
        allow="examples.*,tests.*",
        extra_args=["--concurrency", "2", "--wait-seconds", "1"],
    )
    yield procs
    assert stop_workers(procs) == [0, 0]


def wait_for_status(
    cloud: LocalCloud, stack: dict[str, str], job_id: str, timeout: float = 120
) -> dict[str, Any]:
    """Poll the job record until the job ends."""
    from shardq.core.contracts import TERMINAL_STATUSES
    from shardq.core.jobstore import JobStore

    store = JobStore(stack["JobTableName"], cloud.client("dynamodb"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        if job.status in TERMINAL_STATUSES:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s: {job}")
