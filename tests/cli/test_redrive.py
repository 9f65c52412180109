"""``shardq.core.redrive`` (what ``shardq dlq redrive`` runs) on the local cloud: none lost, ever.

The local cloud has no StartMessageMoveTask, so every test here exercises the receive → resend
(through ``FanOut``) → delete path. Faults are injected at botocore's HTTP layer (``before-send``),
so the real client parses the answers as it would AWS's.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config

from shardq.core.redrive import RedriveReport, redrive, resend
from shardq.core.settings import Settings
from shardq.local.cloud import CREDENTIALS, REGION, LocalCloud
from shardq.local.resources import dlq_urls
from tests.helpers import count_messages, receive_all


class _Raw:
    """Enough of a urllib3 response for botocore's AWSResponse."""

    def __init__(self, body: bytes) -> None:
        self._body = io.BytesIO(body)

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        yield self._body.read()


@pytest.fixture
def sqs(cloud: LocalCloud) -> Any:
    """An SQS client without botocore retries: only the fan-out's retries act on a fault."""
    return boto3.session.Session(
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=REGION,
    ).client("sqs", endpoint_url=cloud.endpoint_url, config=Config(retries={"total_max_attempts": 1}))


@pytest.fixture
def queues(sqs: Any, settings: Settings) -> dict[str, str]:
    return {"tasks": settings.task_queue_url, **{f"{k}_dlq": v for k, v in dlq_urls(sqs, settings).items()}}


def fill_task_dlq(sqs: Any, url: str, n: int) -> list[tuple[str, str]]:
    """``n`` dead tasks in three message groups; their (body, group)."""
    sent = []
    for i in range(n):
        body, group = (
            json.dumps({"job_id": "j", "round": 0, "shard_id": i, "task_type": "train"}),
            f"j:{i % 3}",
        )
        sqs.send_message(
            QueueUrl=url, MessageBody=body, MessageGroupId=group, MessageDeduplicationId=f"j:0:{i}"
        )
        sent.append((body, group))
    return sent


def fault(sqs: Any, operation: str, answer: Callable[[dict[str, Any]], dict[str, Any] | None]) -> list[int]:
    """Answer ``operation`` with ``answer(request body)`` while it returns a body; calls are counted."""
    calls = [0]

    def before_send(request: Any, **kwargs: Any) -> AWSResponse | None:
        target = dict(request.headers).get("X-Amz-Target", b"")
        action = (target.decode() if isinstance(target, bytes) else target).rpartition(".")[2]
        if action != operation:
            return None
        calls[0] += 1
        body = answer(json.loads(request.body or b"{}"))
        if body is None:
            return None  # the real endpoint answers
        headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": "fault"}
        return AWSResponse(request.url, 200, headers, _Raw(json.dumps(body).encode()))

    sqs.meta.events.register_first("before-send.sqs", before_send)
    return calls


def test_a_batch_sqs_fails_entry_by_entry_is_retried_by_the_fan_out(sqs: Any, queues: dict[str, str]) -> None:
    # GIVEN 7 dead tasks, and a task queue whose first SendMessageBatch fails every entry (a
    # transient, receiver-side failure inside a 200 answer: SQS's InternalError per entry)
    sent = fill_task_dlq(sqs, queues["tasks_dlq"], 7)
    first = [True]

    def fail_once(request: dict[str, Any]) -> dict[str, Any] | None:
        if not first[0]:
            return None
        first[0] = False
        return {
            "Successful": [],
            "Failed": [
                {"Id": e["Id"], "Code": "InternalError", "Message": "try again", "SenderFault": False}
                for e in request["Entries"]
            ],
        }

    calls = fault(sqs, "SendMessageBatch", fail_once)
    # WHEN the DLQ is redriven
    report = redrive(sqs, "tasks", queues["tasks_dlq"], queues["tasks"])
    # THEN the fan-out retried the failed entries and every message is back, none left, none twice
    assert (report.method, report.moved, report.failed, report.after) == ("resend", 7, 0, 0)
    assert calls[0] >= 2
    moved = receive_all(sqs, queues["tasks"])
    assert sorted((m["Body"], m["Attributes"]["MessageGroupId"]) for m in moved) == sorted(sent)
    assert count_messages(sqs, queues["tasks_dlq"]) == 0


def test_a_message_the_queue_refuses_stays_in_the_dlq_and_the_rest_move(
    sqs: Any, queues: dict[str, str]
) -> None:
    # GIVEN 5 dead tasks, one of which (shard 2) the task queue refuses for good (a sender fault)
    fill_task_dlq(sqs, queues["tasks_dlq"], 5)

    def refuse_shard_2(request: dict[str, Any]) -> dict[str, Any] | None:
        bad = [e for e in request["Entries"] if json.loads(e["MessageBody"])["shard_id"] == 2]
        if not bad:
            return None
        good = [e for e in request["Entries"] if e not in bad]
        for e in good:  # the others really go to the queue
            sqs_real.send_message(
                QueueUrl=queues["tasks"],
                MessageBody=e["MessageBody"],
                MessageGroupId=e["MessageGroupId"],
                MessageDeduplicationId=e["MessageDeduplicationId"],
            )
        return {
            "Successful": [{"Id": e["Id"], "MessageId": "m", "MD5OfMessageBody": "0" * 32} for e in good],
            "Failed": [{"Id": e["Id"], "Code": "InvalidParameterValue", "SenderFault": True} for e in bad],
        }

    sqs_real = boto3.session.Session(
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=REGION,
    ).client("sqs", endpoint_url=sqs.meta.endpoint_url)
    fault(sqs, "SendMessageBatch", refuse_shard_2)
    # WHEN the DLQ is redriven
    report = RedriveReport(queue="tasks", method="resend", before=5)
    resend(sqs, queues["tasks_dlq"], queues["tasks"], report)
    # THEN the refused message is still in the DLQ (handed back, visible), the others moved
    assert report.failed == 1 and any("not sent" in e for e in report.errors)
    moved = {json.loads(m["Body"])["shard_id"] for m in receive_all(sqs, queues["tasks"])}
    left = {json.loads(m["Body"])["shard_id"] for m in receive_all(sqs, queues["tasks_dlq"])}
    assert 2 in left and 2 not in moved
    # every message is in exactly one queue, or (a batch stopped at the refusal) still in the DLQ
    assert moved | left == set(range(5)) and not moved & left
    assert report.moved == len(moved)


def test_a_crash_between_send_and_delete_duplicates_never_loses(sqs: Any, queues: dict[str, str]) -> None:
    # GIVEN 4 dead tasks and a DLQ whose DeleteMessageBatch fails (the process dies there)
    fill_task_dlq(sqs, queues["tasks_dlq"], 4)

    def die(request: dict[str, Any]) -> dict[str, Any] | None:
        raise ConnectionError("the redrive process died before deleting")

    fault(sqs, "DeleteMessageBatch", die)
    # WHEN the redrive runs into it
    report = RedriveReport(queue="tasks", method="resend", before=4)
    with pytest.raises(ConnectionError):
        resend(sqs, queues["tasks_dlq"], queues["tasks"], report)
    # THEN the sent copies are on the task queue AND the originals still in the DLQ (in flight
    # until their visibility ends): a duplicate, which consumers absorb, never a loss
    on_queue = count_messages(sqs, queues["tasks"])
    assert on_queue >= 1
    assert count_messages(sqs, queues["tasks_dlq"]) == 4
