"""PipelineTrigger: the EventBridge rule that hands each Job Finished event to the pipeline Lambda.

A job submitted with ``after`` waits (status WAITING) until the job it follows ends; the
finisher publishes ``Job Finished`` (source ``shardq``) on the default bus once per job, and this
rule invokes the pipeline function with it (``lambdas/pipeline.py``), which starts or ends each
follower exactly once. Events the rule cannot deliver go to ``dead_letter_queue`` (the pipeline
function's own on-failure queue, so one queue holds every undelivered or failed trigger).
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from stacks.components._props import Problems

EVENT_SOURCE = "shardq"
DETAIL_TYPE = "Job Finished"
MAX_EVENT_AGE = Duration.hours(6)


class PipelineTrigger(Construct):
    """Rule on ``event_bus``: ``{"source": ["shardq"], "detail-type": ["Job Finished"]}`` → ``function``.

    Parameters
    ----------
    function
        The pipeline Lambda (``ShardqFunctions.pipeline``).
    event_bus
        The bus the finisher publishes to (the stack's ``EVENT_BUS_NAME``).
    dead_letter_queue
        Where EventBridge puts an event it could not deliver after ``retry_attempts``.
    retry_attempts, max_event_age
        EventBridge's delivery retries of one event (0..185) and how long it keeps trying.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        function: lambda_.IFunction,
        event_bus: events.IEventBus,
        dead_letter_queue: sqs.IQueue,
        retry_attempts: int = 8,
        max_event_age: Duration = MAX_EVENT_AGE,
    ) -> None:
        super().__init__(scope, construct_id)
        problems = Problems("PipelineTrigger")
        problems.require(
            0 <= retry_attempts <= 185, f"retry_attempts={retry_attempts}: EventBridge accepts 0..185"
        )
        problems.raise_if_any()
        self.rule = events.Rule(
            self,
            "JobFinished",
            event_bus=event_bus,
            description="shardq pipelines: start or end the jobs that follow a job that ended",
            event_pattern=events.EventPattern(source=[EVENT_SOURCE], detail_type=[DETAIL_TYPE]),
            targets=[
                targets.LambdaFunction(
                    function,
                    dead_letter_queue=dead_letter_queue,
                    retry_attempts=retry_attempts,
                    max_event_age=max_event_age,
                )
            ],
        )
