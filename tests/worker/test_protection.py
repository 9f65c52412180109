"""ECS task scale-in protection against a local stand-in of the ECS agent endpoint (127.0.0.1)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from botocore.exceptions import ClientError

from shardq.core.contracts import ShardTask
from shardq.worker.protection import ENDPOINT_PATH, TaskProtection
from shardq.worker.runtime import TaskContext, Worker
from tests.helpers import TRUSTED

TASK_ARN = "arn:aws:ecs:eu-west-1:123456789012:task/shardq-fleet/0123456789abcdef"
# ECS_AGENT_URI is http://169.254.170.2/api/<task id>; the endpoint hangs below it.
STATE_PATH = "/api/0123456789abcdef" + ENDPOINT_PATH


@dataclass
class FakeAgent:
    """What the agent was asked, and what it answers next."""

    url: str = ""
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    status: int = 200
    answer: dict[str, Any] | None = None
    protected: bool = False


@pytest.fixture
def agent() -> Iterator[FakeAgent]:
    state = FakeAgent()

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.calls.append(("PUT", self.path, body))
            if state.status == 200 and state.answer is None and self.path == STATE_PATH:
                state.protected = body["ProtectionEnabled"]
                payload: dict[str, Any] = {
                    "protection": {
                        "ProtectionEnabled": body["ProtectionEnabled"],
                        "ExpirationDate": "2030-01-01T00:00:00Z" if body["ProtectionEnabled"] else None,
                        "TaskArn": TASK_ARN,
                    }
                }
            else:
                payload = state.answer or {"error": {"Code": "NotFound", "Message": self.path}}
            raw = json.dumps(payload).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/api/0123456789abcdef"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def test_outside_ecs_every_call_is_a_no_op() -> None:
    # GIVEN no ECS_AGENT_URI
    protection = TaskProtection.from_environment({})
    # WHEN a task starts and finishes
    protection.task_started()
    protection.task_finished()
    # THEN nothing was attempted
    assert not protection.enabled
    assert protection.set(True) is False
    assert protection.busy == 0


def test_environment_sets_the_endpoint_and_the_expiry(agent: FakeAgent) -> None:
    protection = TaskProtection.from_environment(
        {"ECS_AGENT_URI": agent.url, "SHARDQ_TASK_PROTECTION_MINUTES": "90"}
    )
    assert protection.enabled
    assert protection.expires_minutes == 90


def test_protects_while_a_task_runs_and_clears_between_tasks(agent: FakeAgent) -> None:
    protection = TaskProtection(agent_uri=agent.url, expires_minutes=780)

    protection.task_started()
    assert agent.protected
    protection.task_finished()

    assert not agent.protected
    assert agent.calls == [
        ("PUT", STATE_PATH, {"ProtectionEnabled": True, "ExpiresInMinutes": 780}),
        ("PUT", STATE_PATH, {"ProtectionEnabled": False}),
    ]


def test_slots_of_one_task_share_the_protection(agent: FakeAgent) -> None:
    # GIVEN two worker slots in one ECS task
    protection = TaskProtection(agent_uri=agent.url)
    # WHEN both take a shard and the first finishes
    protection.task_started()
    protection.task_started()
    protection.task_finished()
    # THEN the task stays protected (the second start refreshed the expiry) ...
    assert agent.protected
    assert [c[2]["ProtectionEnabled"] for c in agent.calls] == [True, True]
    # ... until the last busy slot finishes
    protection.task_finished()
    assert not agent.protected
    assert protection.busy == 0


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        (200, {"failure": {"Arn": TASK_ARN, "Reason": "TASK_NOT_VALID"}}),
        (400, {"error": {"Code": "InvalidParameterException", "Message": "bad expiry"}}),
        (500, {"error": {"Code": "ServerException", "Message": "boom"}}),
    ],
)
def test_refusals_are_logged_not_raised(
    agent: FakeAgent, status: int, answer: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    agent.status, agent.answer = status, answer
    protection = TaskProtection(agent_uri=agent.url)
    with caplog.at_level(logging.WARNING, logger="shardq.worker"):
        assert protection.set(True) is False
    assert "task scale-in protection enable refused" in caplog.text


def test_an_unreachable_agent_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    protection = TaskProtection(agent_uri="http://127.0.0.1:9/api/x", timeout_s=0.5)
    with caplog.at_level(logging.WARNING, logger="shardq.worker"):
        protection.task_started()
        protection.task_finished()
    assert "task scale-in protection enable failed" in caplog.text


def test_expiry_outside_ecs_limits_is_refused() -> None:
    with pytest.raises(ValueError, match=r"1\.\.2880"):
        TaskProtection(agent_uri=None, expires_minutes=3000)


# -- the worker calls the protection around a whole task --------------------------------------------

PROTECTED_DURING_TRAINING: list[bool] = []
CURRENT_AGENT: list[FakeAgent] = []


def train_and_look(task: ShardTask, ctx: TaskContext) -> dict[str, Any]:
    """Training function of the test task: records whether the task was protected meanwhile."""
    PROTECTED_DURING_TRAINING.append(CURRENT_AGENT[0].protected)
    return {"num_samples": 10, "metrics": {"loss": 0.5}}


class RecordingSqs:
    """Just enough SQS for one task: one message, then records sends and deletes."""

    def __init__(self, body: str, agent: FakeAgent) -> None:
        self.messages = [
            {"ReceiptHandle": "r-1", "Body": body, "Attributes": {"ApproximateReceiveCount": "1"}}
        ]
        self.agent = agent
        self.events: list[tuple[str, bool]] = []

    def receive_message(self, **kw: Any) -> dict[str, Any]:
        messages, self.messages = self.messages, []
        return {"Messages": messages}

    def send_message(self, **kw: Any) -> dict[str, Any]:
        self.events.append(("send_result", self.agent.protected))
        return {"MessageId": "m-1"}

    def delete_message(self, **kw: Any) -> dict[str, Any]:
        self.events.append(("delete_task", self.agent.protected))
        return {}

    def change_message_visibility(self, **kw: Any) -> dict[str, Any]:
        return {}


class EmptyBucket:
    """The worker's bucket as a fresh task sees it: no checkpoint yet (these tests are about the
    protection hooks; S3 itself is exercised on the local cloud elsewhere)."""

    def get_object(self, **kw: Any) -> dict[str, Any]:
        raise ClientError({"Error": {"Code": "NoSuchKey", "Message": kw["Key"]}}, "GetObject")


def test_worker_holds_protection_from_receive_to_delete(agent: FakeAgent) -> None:
    # GIVEN a worker on "ECS" with its protection hooks, and one map task
    task = ShardTask(
        job_id="p",
        round=0,
        shard_id=0,
        shard_count=1,
        kind="map",
        task_type="train",
        data={"start": 0, "end": 10},
        hyperparameters={},
        output_prefix="s3://bucket/jobs/p/r0/s0/",
        entrypoint=f"{__name__}:train_and_look",
    )
    sqs = RecordingSqs(task.to_json(), agent)
    protection = TaskProtection(agent_uri=agent.url)
    CURRENT_AGENT[:] = [agent]
    PROTECTED_DURING_TRAINING.clear()
    worker = Worker(
        allow=TRUSTED,
        sqs=sqs,
        s3=EmptyBucket(),
        task_queue_url="https://sqs.local/q.fifo",
        results_queue_url="https://sqs.local/r",
        max_receive_count=5,
        wait_s=1,
        on_task_start=protection.task_started,
        on_task_end=protection.task_finished,
    )
    # WHEN it handles the task
    assert worker.poll_once() is True
    # THEN training, the result and the delete all happened under protection, cleared afterwards
    assert PROTECTED_DURING_TRAINING == [True]
    assert sqs.events == [("send_result", True), ("delete_task", True)]
    assert not agent.protected
    assert [c[2]["ProtectionEnabled"] for c in agent.calls] == [True, False]


def test_a_failing_hook_does_not_fail_the_task(agent: FakeAgent) -> None:
    def broken() -> None:
        raise RuntimeError("agent gone")

    task = ShardTask(
        job_id="p",
        round=0,
        shard_id=1,
        shard_count=2,
        kind="map",
        task_type="train",
        data={"start": 0, "end": 10},
        hyperparameters={},
        output_prefix="s3://bucket/jobs/p/r0/s1/",
        entrypoint=f"{__name__}:train_and_look",
    )
    sqs = RecordingSqs(task.to_json(), agent)
    CURRENT_AGENT[:] = [agent]
    worker = Worker(
        allow=TRUSTED,
        sqs=sqs,
        s3=EmptyBucket(),
        task_queue_url="https://sqs.local/q.fifo",
        results_queue_url="https://sqs.local/r",
        max_receive_count=5,
        on_task_start=broken,
        on_task_end=broken,
    )
    assert worker.poll_once() is True
    assert [e for e, _ in sqs.events] == ["send_result", "delete_task"]
