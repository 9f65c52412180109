"""Create shardq's queues, table and bucket directly (no CloudFormation) on an endpoint.

Mirrors the stack's stateful resources and their SQS semantics (FIFO task queue with
content-based deduplication and a FIFO DLQ, standard results queue with a DLQ, the job
table with its ``by_status`` index and TTL, the artifact bucket). Tests use it to get a
fresh, isolated set per test in milliseconds; the deployed stack is the source of truth.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from shardq.core.settings import Settings


def provision(
    sqs: Any,
    ddb: Any,
    s3: Any,
    *,
    prefix: str | None = None,
    max_receive_count: int = 5,
    task_visibility_s: int = 300,
    results_visibility_s: int = 720,
) -> Settings:
    """Create one isolated set of resources; returns the settings that point at them."""
    p = prefix or f"sq{uuid.uuid4().hex[:10]}"
    fifo = {"FifoQueue": "true", "ContentBasedDeduplication": "true"}
    task_dlq = sqs.create_queue(
        QueueName=f"{p}-tasks-dlq.fifo", Attributes={**fifo, "MessageRetentionPeriod": "1209600"}
    )["QueueUrl"]
    task_dlq_arn = sqs.get_queue_attributes(QueueUrl=task_dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    tasks = sqs.create_queue(
        QueueName=f"{p}-tasks.fifo",
        Attributes={
            **fifo,
            "VisibilityTimeout": str(task_visibility_s),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": task_dlq_arn, "maxReceiveCount": max_receive_count}
            ),
        },
    )["QueueUrl"]
    results_dlq = sqs.create_queue(
        QueueName=f"{p}-results-dlq", Attributes={"MessageRetentionPeriod": "1209600"}
    )["QueueUrl"]
    results_dlq_arn = sqs.get_queue_attributes(QueueUrl=results_dlq, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    results = sqs.create_queue(
        QueueName=f"{p}-results",
        Attributes={
            "VisibilityTimeout": str(results_visibility_s),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": results_dlq_arn, "maxReceiveCount": max_receive_count}
            ),
        },
    )["QueueUrl"]
    table = f"{p}-jobs"
    ddb.create_table(
        TableName=table,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
            {"AttributeName": "status", "AttributeType": "S"},
            {"AttributeName": "created_at", "AttributeType": "S"},
        ],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by_status",
                "KeySchema": [
                    {"AttributeName": "status", "KeyType": "HASH"},
                    {"AttributeName": "created_at", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    )
    ddb.update_time_to_live(
        TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
    )
    bucket = f"{p}-artifacts"
    s3.create_bucket(Bucket=bucket)
    return Settings(
        job_table=table,
        task_queue_url=tasks,
        results_queue_url=results,
        artifact_bucket=bucket,
        max_receive_count=max_receive_count,
    )


def dlq_urls(sqs: Any, settings: Settings) -> dict[str, str]:
    """The DLQ URLs of a provisioned set (named after its queues)."""
    return {
        "tasks": settings.task_queue_url.replace("-tasks.fifo", "-tasks-dlq.fifo"),
        "results": settings.results_queue_url + "-dlq",
    }
