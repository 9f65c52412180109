"""TaskQueues: the FIFO queue GPU workers poll, and its FIFO dead-letter queue."""

from __future__ import annotations

from aws_cdk import Annotations, Duration
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

RECOMMENDED_MIN_RECEIVE_COUNT = 5
MAX_RECEIVE_COUNT_WARNING_ID = "shardq:TaskQueues.maxReceiveCountBelow5"


class TaskQueues(Construct):
    """FIFO task queue (content-based deduplication, SSE, TLS only) redriving to a FIFO DLQ.

    The task queue has no Lambda consumer: workers long-poll it, so its visibility timeout is the
    worker's lease, which workers extend (heartbeat) while they train. The DLQ is consumed by the DLQ
    handler Lambda, so its visibility timeout is derived from that function's timeout.

    Parameters
    ----------
    max_receive_count
        Receives before a task moves to the DLQ. Below 5 is accepted with a synth warning.
    visibility_timeout
        The worker lease per receive (heartbeats extend it).
    dlq_consumer_timeout
        Timeout of the function consuming the DLQ; the DLQ's visibility is 6 x this.
    encryption_key
        Customer KMS key for SSE-KMS; ``None`` means SQS-managed SSE.
    high_throughput
        High-throughput FIFO (dedup scope and throughput limit per message group).
    dead_letter_queue
        Bring your own DLQ (must be FIFO); by default one is created.
    retention
        Retention of the task queue (the DLQ always keeps messages 14 days).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        max_receive_count: int,
        visibility_timeout: Duration,
        dlq_consumer_timeout: Duration,
        encryption_key: kms.IKey | None = None,
        high_throughput: bool = False,
        dead_letter_queue: sqs.IQueue | None = None,
        retention: Duration = DEFAULT_QUEUE_RETENTION,
    ) -> None:
        super().__init__(scope, construct_id)
        _validate(max_receive_count, visibility_timeout, dlq_consumer_timeout, dead_letter_queue, retention)
        if max_receive_count < RECOMMENDED_MIN_RECEIVE_COUNT:
            Annotations.of(self).add_warning_v2(
                MAX_RECEIVE_COUNT_WARNING_ID,
                f"max_receive_count={max_receive_count} is below 5: throttled receives and crashed or "
                "spot-interrupted workers count as receives too, so healthy tasks may land in the DLQ.",
            )

        self.max_receive_count = max_receive_count
        self.dead_letter_queue: sqs.IQueue = dead_letter_queue or secure_queue(
            self,
            "DeadLetterQueue",
            fifo=True,
            encryption_key=encryption_key,
            retention=DLQ_RETENTION,
            visibility_timeout=consumer_visibility(dlq_consumer_timeout),
        )
        self.queue = secure_queue(
            self,
            "Queue",
            fifo=True,
            high_throughput=high_throughput,
            encryption_key=encryption_key,
            retention=retention,
            visibility_timeout=visibility_timeout,
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.dead_letter_queue, max_receive_count=max_receive_count
            ),
        )


def _validate(
    max_receive_count: int,
    visibility_timeout: Duration,
    dlq_consumer_timeout: Duration,
    dead_letter_queue: sqs.IQueue | None,
    retention: Duration,
) -> None:
    """SQS's ranges, a FIFO DLQ, retention within the DLQ's (every problem in one error)."""
    problems = Problems("TaskQueues")
    problems.require(
        1 <= max_receive_count <= 1000,
        f"max_receive_count={max_receive_count}: SQS accepts 1..1000; fix: use 5 or more",
    )
    problems.require(
        0 < seconds(visibility_timeout) <= SQS_MAX_VISIBILITY_SECONDS,
        f"visibility_timeout={seconds(visibility_timeout)}s: SQS accepts 1..43200 s; fix: use the "
        "worker heartbeat interval times 2 or more, at most 43200",
    )
    problems.require(
        VISIBILITY_PER_CONSUMER_TIMEOUT * seconds(dlq_consumer_timeout) <= SQS_MAX_VISIBILITY_SECONDS,
        f"dlq_consumer_timeout={seconds(dlq_consumer_timeout)}s: the DLQ visibility must be 6 x the "
        "consumer timeout and SQS caps visibility at 43200 s; fix: use a timeout of at most 7200 s",
    )
    problems.require(
        dead_letter_queue is None or dead_letter_queue.fifo,
        "dead_letter_queue is a standard queue: a FIFO source queue can only redrive to a FIFO "
        "queue; fix: pass a FIFO queue or omit dead_letter_queue to create one",
    )
    problems.require(
        seconds(retention) <= seconds(DLQ_RETENTION),
        f"retention={seconds(retention)}s exceeds the DLQ retention (14 days); fix: use at most 14 days",
    )
    problems.raise_if_any()
