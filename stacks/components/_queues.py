"""The one way shardq builds a queue: encrypted at rest, TLS-only, explicit retention."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sqs as sqs
from constructs import Construct

DEFAULT_QUEUE_RETENTION = Duration.days(4)  # the SQS default, stated
DLQ_RETENTION = Duration.days(14)  # the SQS maximum: time to look at a failure and redrive it


def secure_queue(
    scope: Construct,
    construct_id: str,
    *,
    encryption_key: kms.IKey | None,
    retention: Duration,
    visibility_timeout: Duration | None = None,
    fifo: bool = False,
    high_throughput: bool = False,
    dead_letter_queue: sqs.DeadLetterQueue | None = None,
) -> sqs.Queue:
    """Create a queue with SSE (SQS-managed, or the given customer KMS key) and ``enforce_ssl``.

    FIFO queues get content-based deduplication: every shardq message body carries its identity
    (job, round, shard), so identical bodies really are duplicates.
    """
    encryption = (
        dict(encryption=sqs.QueueEncryption.KMS, encryption_master_key=encryption_key)
        if encryption_key is not None
        else dict(encryption=sqs.QueueEncryption.SQS_MANAGED)
    )
    throughput = (
        dict(
            deduplication_scope=sqs.DeduplicationScope.MESSAGE_GROUP,
            fifo_throughput_limit=sqs.FifoThroughputLimit.PER_MESSAGE_GROUP_ID,
        )
        if high_throughput
        else {}
    )
    return sqs.Queue(
        scope,
        construct_id,
        fifo=fifo or None,
        content_based_deduplication=True if fifo else None,
        retention_period=retention,
        visibility_timeout=visibility_timeout,
        dead_letter_queue=dead_letter_queue,
        enforce_ssl=True,
        **encryption,
        **throughput,  # type: ignore[arg-type]
    )
