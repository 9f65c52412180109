"""ResultsQueue: the standard queue workers post ShardResults to, and its dead-letter queue."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from stacks.components._props import (
    SQS_MAX_VISIBILITY_SECONDS,
    VISIBILITY_PER_CONSUMER_TIMEOUT,
    Problems,
    consumer_visibility,
    seconds,
)
from stacks.components._queues import DEFAULT_QUEUE_RETENTION, DLQ_RETENTION, secure_queue


class ResultsQueue(Construct):
    """Standard results queues (SSE, TLS only) with a standard DLQ, and the parked-results queue.

    Two results queues share the DLQ (so its handler, alarm and ``shardq dlq`` cover both): the bulk
    ``queue``, read in batches of 100 with a batching window, and the ``fast_queue``, read in batches
    of 10 with none, for the messages that close or move a round (``shardq.core.result_routes``).

    The parked-results queue holds dead results no job can record (they name no planned task),
    each with the reason as a message attribute: no consumer reads it, so they stay visible to
    ``shardq dlq show`` for 14 days (``shardq.core.parking`` says why a queue of its own).

    Standard, not FIFO: results need no order and the aggregator is idempotent, while a standard
    queue lets the event source take batches of 100 (FIFO caps them at 10).

    Parameters
    ----------
    consumer_timeout
        Timeout of the consuming (aggregator) function; visibility is 6 x this, computed here.
    dlq_consumer_timeout
        Timeout of the DLQ's consumer (the results DLQ handler); the DLQ's visibility is 6 x this.
    max_receive_count
        Receives before a result moves to the DLQ.
    encryption_key
        Customer KMS key for SSE-KMS; ``None`` means SQS-managed SSE.
    retention
        Retention of the results queue (the DLQ keeps messages 14 days).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        consumer_timeout: Duration,
        max_receive_count: int,
        dlq_consumer_timeout: Duration | None = None,
        encryption_key: kms.IKey | None = None,
        retention: Duration = DEFAULT_QUEUE_RETENTION,
    ) -> None:
        super().__init__(scope, construct_id)
        problems = Problems("ResultsQueue")
        problems.require(
            VISIBILITY_PER_CONSUMER_TIMEOUT * seconds(consumer_timeout) <= SQS_MAX_VISIBILITY_SECONDS,
            f"consumer_timeout={seconds(consumer_timeout)}s: visibility must be 6 x the consumer timeout "
            "and SQS caps visibility at 43200 s; fix: use a timeout of at most 7200 s",
        )
        problems.require(
            dlq_consumer_timeout is None
            or VISIBILITY_PER_CONSUMER_TIMEOUT * seconds(dlq_consumer_timeout) <= SQS_MAX_VISIBILITY_SECONDS,
            f"dlq_consumer_timeout={seconds(dlq_consumer_timeout or consumer_timeout)}s: the DLQ visibility "
            "must be 6 x the consumer timeout and SQS caps visibility at 43200 s; fix: use a timeout of "
            "at most 7200 s",
        )
        problems.require(
            1 <= max_receive_count <= 1000,
            f"max_receive_count={max_receive_count}: SQS accepts 1..1000; fix: use 5 or more",
        )
        problems.require(
            seconds(retention) <= seconds(DLQ_RETENTION),
            f"retention={seconds(retention)}s exceeds the DLQ retention (14 days); fix: use at most 14 days",
        )
        problems.raise_if_any()

        self.visibility_timeout = consumer_visibility(consumer_timeout)
        self.dead_letter_queue = secure_queue(
            self,
            "DeadLetterQueue",
            encryption_key=encryption_key,
            retention=DLQ_RETENTION,
            visibility_timeout=consumer_visibility(dlq_consumer_timeout) if dlq_consumer_timeout else None,
        )
        self.parked_queue = secure_queue(
            self, "ParkedQueue", encryption_key=encryption_key, retention=DLQ_RETENTION
        )
        self.fast_queue = secure_queue(
            self,
            "FastQueue",
            encryption_key=encryption_key,
            retention=retention,
            visibility_timeout=self.visibility_timeout,
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.dead_letter_queue, max_receive_count=max_receive_count
            ),
        )
        self.queue = secure_queue(
            self,
            "Queue",
            encryption_key=encryption_key,
            retention=retention,
            visibility_timeout=self.visibility_timeout,
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.dead_letter_queue, max_receive_count=max_receive_count
            ),
        )
