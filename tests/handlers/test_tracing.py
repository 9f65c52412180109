"""X-Ray tracing (lambdas/tracing.py): applied where tracing is on, never imported where it is off.

Each case runs a handler in a fresh interpreter, since the tracer is decided when the handler
module is imported. With tracing on, the X-Ray SDK sends its subsegments over UDP to a stand-in
daemon socket on 127.0.0.1 that the test reads: what would reach X-Ray on AWS.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lambdas.tracing import tracing_enabled
from shardq.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TRACE_ID = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"

# Imports the three handlers, invokes the splitter with a real request, and reports.
PROBE = """
import json, sys
from lambdas import aggregator, dlq_handler, splitter
from tests.helpers import LambdaContext
request = {"job_id": "traced", "kind": "map", "dataset": {"num_samples": 4}, "sharding": {"shard_count": 2}}
answer = splitter.handler(request, LambdaContext())
print(json.dumps({"answer": answer, "xray_imported": "aws_xray_sdk" in sys.modules}))
"""


def run_probe(env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        check=False,  # a failing probe is reported with its stderr below
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.fixture
def daemon() -> Iterator[socket.socket]:
    """A UDP socket where the X-Ray daemon would listen (loopback, a free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(1.0)
    yield sock
    sock.close()


def lambda_process_env(**changes: str | None) -> dict[str, str]:
    """This test's Lambda environment (lambda_env) as a Lambda container has it, with ``changes``."""
    env = {**os.environ, "LAMBDA_TASK_ROOT": str(ROOT)}
    env.pop("PYTHONPATH", None)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def received(sock: socket.socket) -> list[dict[str, Any]]:
    """Every (sub)segment document sent so far, nested subsegments flattened."""
    docs: list[dict[str, Any]] = []
    try:
        while True:
            data, _ = sock.recvfrom(65535)
            header, _, body = data.decode().partition("\n")
            assert json.loads(header) == {"format": "json", "version": 1}
            docs.append(json.loads(body))
    except TimeoutError:
        pass
    flat: list[dict[str, Any]] = []
    while docs:
        doc = docs.pop()
        flat.append(doc)
        docs.extend(doc.get("subsegments", []))
    return flat


def test_tracing_on_traces_the_handler_and_its_aws_calls(lambda_env: Settings, daemon: socket.socket) -> None:
    # GIVEN a Lambda container with tracing on (no POWERTOOLS_TRACE_DISABLED) and a trace header
    host, port = daemon.getsockname()
    env = lambda_process_env(
        POWERTOOLS_TRACE_DISABLED=None, AWS_XRAY_DAEMON_ADDRESS=f"{host}:{port}", _X_AMZN_TRACE_ID=TRACE_ID
    )
    # WHEN the splitter handles a real request
    got = run_probe(env)
    # THEN the handler's subsegment carries Powertools' annotations, and boto3's calls are traced
    assert got["answer"]["ok"] is True, got["answer"]
    assert got["xray_imported"] is True
    docs = received(daemon)
    handler = [d for d in docs if d.get("name") == "## handler"]
    assert len(handler) == 1, [d.get("name") for d in docs]
    assert handler[0]["annotations"] == {"ColdStart": True, "Service": "shardq"}
    assert handler[0]["trace_id"] == "1-5759e988-bd862e3fe1be46a994272793"
    aws_calls = {d["name"] for d in docs if d.get("namespace") == "aws"}
    assert {"dynamodb", "sqs"} <= aws_calls, aws_calls


@pytest.mark.parametrize(
    "changes",
    [{"POWERTOOLS_TRACE_DISABLED": "true"}, {"POWERTOOLS_TRACE_DISABLED": None, "LAMBDA_TASK_ROOT": None}],
    ids=["disabled-in-lambda", "outside-lambda"],
)
def test_tracing_off_never_imports_the_xray_sdk(
    lambda_env: Settings, daemon: socket.socket, changes: dict[str, str | None]
) -> None:
    host, port = daemon.getsockname()
    env = lambda_process_env(AWS_XRAY_DAEMON_ADDRESS=f"{host}:{port}", _X_AMZN_TRACE_ID=TRACE_ID, **changes)
    got = run_probe(env)
    assert got["answer"]["ok"] is True, got["answer"]
    assert got["xray_imported"] is False
    assert received(daemon) == []


@pytest.mark.parametrize(
    ("env", "enabled"),
    [
        ({"LAMBDA_TASK_ROOT": "/var/task"}, True),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "false"}, True),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "1"}, False),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "TRUE"}, False),
        ({"LAMBDA_TASK_ROOT": "/var/task", "AWS_SAM_LOCAL": "true"}, False),
        ({"LAMBDA_TASK_ROOT": "/var/task", "AWS_CHALICE_CLI_MODE": "true"}, False),
        ({}, False),
    ],
)
def test_tracing_follows_powertools_rules(env: dict[str, str], enabled: bool) -> None:
    assert tracing_enabled(env) is enabled
