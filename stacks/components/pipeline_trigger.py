"""PipelineTrigger: the EventBridge rule that hands each Job Finished event to the pipeline Lambda.

A job submitted with ``after`` waits (status WAITING) until the job it follows ends; the
finisher publishes ``Job Finished`` (source ``shardq``) on the default bus once per job, and this
rule invokes the pipeline function with it (``lambdas/pipeline.py``), which starts or ends each
follower exactly once. Events the rule cannot deliver go to ``dead_letter_queue`` (the pipeline
function's own on-failure queue, so one queue holds every undelivered or failed trigger).

When that queue is encrypted with a customer key (``queue_encryption: "kms"``), EventBridge
writes to it as ``events.amazonaws.com``, which needs the key: the key policy lets that service
principal ``kms:GenerateDataKey`` and ``kms:Decrypt`` only for this rule (``aws:SourceArn``), as
the SQS guide's least-privilege policies for encrypted queues write it. The rule then has a
name, generated here from the stack's name and the construct path: its ARN must be known
without referring to the rule itself, since the rule refers to the queue, the queue to the key,
and a reference from the key's policy back to the rule would be a cycle. A key imported by ARN
(``queue_kms_key_arn``) cannot be changed by the stack: synth warns with the statement to add.
"""

from __future__ import annotations

import hashlib

from aws_cdk import Annotations, Duration, Stack, Token
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from stacks.components._props import Problems

EVENT_SOURCE = "shardq"
DETAIL_TYPE = "Job Finished"
MAX_EVENT_AGE = Duration.hours(6)
# What EventBridge needs of a customer key to write to an encrypted dead-letter queue.
DLQ_KEY_ACTIONS = ("kms:GenerateDataKey", "kms:Decrypt")
IMPORTED_KEY_WARNING_ID = "shardq:PipelineTrigger.importedKeyPolicy"


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
        key = dead_letter_queue.encryption_master_key
        name = self._rule_name() if key is not None else None
        self.rule = events.Rule(
            self,
            "JobFinished",
            rule_name=name,
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
        if key is not None and name is not None:
            self._let_eventbridge_use(key, event_bus, name)

    def _rule_name(self) -> str:
        """A name unique to this stack and construct (a rule name: 64 characters at most)."""
        stack = Stack.of(self).stack_name
        digest = hashlib.sha256(f"{stack}/{self.node.path}".encode()).hexdigest()[:8]
        return f"{stack[:40]}-pipelines-{digest}"

    def _rule_arn_name(self, event_bus: events.IEventBus, name: str) -> str:
        """The rule's ARN resource name (a rule on a custom bus has the bus in its ARN)."""
        bus = event_bus.event_bus_name
        return name if not Token.is_unresolved(bus) and bus == "default" else f"{bus}/{name}"

    def _let_eventbridge_use(self, key: kms.IKey, event_bus: events.IEventBus, name: str) -> None:
        """Key policy: EventBridge may use ``key`` for this rule's dead letters, and only for them."""
        resource_name = self._rule_arn_name(event_bus, name)
        # Written from the name: a reference to the rule here would close the cycle above.
        rule_arn = Stack.of(self).format_arn(service="events", resource="rule", resource_name=resource_name)
        statement = iam.PolicyStatement(
            sid="PipelineRuleDeadLetters",
            principals=[iam.ServicePrincipal("events.amazonaws.com")],
            actions=list(DLQ_KEY_ACTIONS),
            resources=["*"],  # in a key policy, "*" is this key
            conditions={"ArnEquals": {"aws:SourceArn": rule_arn}},
        )
        if not key.add_to_resource_policy(statement).statement_added:
            Annotations.of(self).add_warning_v2(
                IMPORTED_KEY_WARNING_ID,
                "the queue key was imported (queue_kms_key_arn), so the stack cannot let EventBridge "
                "write the pipeline rule's undelivered events to PipelineFailureQueue; add to the key's "
                'policy: Allow, Principal {"Service": "events.amazonaws.com"}, Action '
                f"{list(DLQ_KEY_ACTIONS)}, Resource *, Condition ArnEquals aws:SourceArn "
                f"arn:<partition>:events:<region>:<account>:rule/{resource_name}",
            )
