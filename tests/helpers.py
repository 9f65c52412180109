"""Test helpers: real SQS messages turned into real Lambda event shapes, a LambdaContext, a worker stand-in."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from shardq.core.contracts import ShardResult, ShardTask


@dataclass
class LambdaContext:
    """The slice of the Lambda context the handlers read."""

    function_name: str = "shardq-test"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:000000000000:function:shardq-test"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"
    remaining_ms: int = 300_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def receive_all(sqs: Any, url: str, *, max_empty: int = 2, attributes: bool = True) -> list[dict[str, Any]]:
    """Receive every visible message (they become in flight), FIFO groups included."""
    out: list[dict[str, Any]] = []
    empty = 0
    while empty < max_empty:
        resp = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            AttributeNames=["All"] if attributes else [],
            MessageSystemAttributeNames=["All"],
        )
        msgs = resp.get("Messages", [])
        if not msgs:
            empty += 1
            continue
        empty = 0
        out.extend(msgs)
    return out


def count_messages(sqs: Any, url: str) -> int:
    """Visible + in-flight + delayed messages on a queue."""
    attrs = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return sum(int(v) for v in attrs.values())


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """The Lambda SQS event an event source mapping builds from these received messages."""
    records = []
    for m in messages:
        attrs = m.get("Attributes", {})
        records.append(
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {
                    "ApproximateReceiveCount": attrs.get("ApproximateReceiveCount", "1"),
                    "SentTimestamp": attrs.get("SentTimestamp", str(int(time.time() * 1000))),
                    "SenderId": attrs.get("SenderId", "AIDAEXAMPLE"),
                    "ApproximateFirstReceiveTimestamp": attrs.get(
                        "ApproximateFirstReceiveTimestamp", str(int(time.time() * 1000))
                    ),
                    **{k: attrs[k] for k in ("MessageGroupId", "MessageDeduplicationId", "SequenceNumber") if k in attrs},
                },
                "messageAttributes": {},
                "md5OfBody": m.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": "us-east-1",
            }
        )
    return {"Records": records}


def body_event(bodies: list[str], queue_arn: str = "arn:aws:sqs:us-east-1:000000000000:results") -> dict[str, Any]:
    """An SQS event from raw bodies (for records that never touched a queue, e.g. malformed ones)."""
    return sqs_event(
        [{"MessageId": f"m-{i}", "ReceiptHandle": f"rh-{i}", "Body": b} for i, b in enumerate(bodies)], queue_arn
    )


def queue_arn(sqs: Any, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def result_for(task: ShardTask, *, status: str = "succeeded", loss: float | None = None) -> ShardResult:
    """What a deterministic worker reports for a task (no training: the aggregator is under test)."""
    if task.task_type == "reduce":
        return ShardResult(
            job_id=task.job_id,
            round=task.round,
            shard_id=0,
            task_type="reduce",
            status=status,  # type: ignore[arg-type]
            artifact_uri=task.output_prefix + "model.npz" if status == "succeeded" else None,
            error=None if status == "succeeded" else "reduce blew up",
        )
    n = int(task.data.get("end", 0)) - int(task.data.get("start", 0)) if "start" in task.data else 1
    value = loss if loss is not None else 1.0 / (1 + task.shard_id + task.round)
    return ShardResult(
        job_id=task.job_id,
        round=task.round,
        shard_id=task.shard_id,
        task_type="train",
        status=status,  # type: ignore[arg-type]
        metrics={"loss": value, "accuracy": 1 - value} if status == "succeeded" else {},
        num_samples=n if status == "succeeded" else 0,
        artifact_uri=task.output_prefix + "model.npz" if status == "succeeded" else None,
        duration_s=0.5,
        worker_id="test-worker",
        error=None if status == "succeeded" else "CUDA out of memory",
    )


def tasks_of(messages: list[dict[str, Any]]) -> list[ShardTask]:
    return [ShardTask.from_json(m["Body"]) for m in messages]


def results_event(results: list[ShardResult]) -> dict[str, Any]:
    return body_event([r.to_json() for r in results])


def json_lines(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [json.loads(m["Body"]) for m in messages]
