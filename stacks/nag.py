"""Every cdk-nag finding shardq accepts: one row of data per finding, with its reason.

cdk-nag 3.x is a CDK validation plugin (``stacks/application.py`` registers the AwsSolutions and
Serverless packs). A finding is acknowledged at the narrowest construct with
``Validations.of(scope).acknowledge(Acknowledgment(id=..., reason=...))``; the id carries the pack
prefix and the finding's detail (``AwsSolutions::AwsSolutions-IAM5[Resource::*]``), because a bare
rule id is accepted and silently matches nothing. tests/infra/test_nag.py checks that every row here
suppresses a finding, and every suppressed finding comes from a row here.

A row names *where* it applies (a :data:`SCOPES` selector over the stack) rather than a construct, so
the table stays plain data; a selector yields nothing when its part of the stack is absent (no KMS
key, no fleet, no alarm email), and may fill placeholders of the finding id (``{arn}``, ``{cluster}``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aws_cdk import Acknowledgment, CfnResource, Validations
from constructs import IConstruct

# Logical ids pinned by ShardqStack (PINNED_LOGICAL_IDS), so the finding details are stable.
_BUCKET_OBJECTS = "Resource::<ArtifactBucket.Arn>/*"


@dataclass(frozen=True)
class NagRule:
    """One accepted finding: its pack-prefixed id (with ``{placeholders}``), reason and scope selector."""

    finding: str
    where: str
    reason: str


@dataclass(frozen=True)
class NagAcknowledgment:
    """One cdk-nag finding acknowledged at one scope, with the reason (read by the tests)."""

    scope: IConstruct
    id: str
    reason: str


Selector = Callable[[Any], Iterator[tuple[IConstruct, Mapping[str, str]]]]


def _function_roles(stack: Any) -> Iterator[tuple[IConstruct, Mapping[str, str]]]:
    for fn in stack.functions.all_functions:
        assert fn.role is not None
        yield fn.role, {}


def _function_roles_with_queue_key(stack: Any) -> Iterator[tuple[IConstruct, Mapping[str, str]]]:
    if stack.queue_key is not None:
        yield from _function_roles(stack)


def _event_source_consumers(stack: Any) -> Iterator[tuple[IConstruct, Mapping[str, str]]]:
    yield stack.functions.aggregator, {}
    yield stack.functions.dlq_handler, {}
    yield stack.functions.results_dlq_handler, {}


def _dataset_buckets(stack: Any) -> Iterator[tuple[IConstruct, Mapping[str, str]]]:
    for arn in stack.config.dataset_bucket_arns:
        yield stack.worker_access.policy, {"arn": arn}


def _alarm_topic_with_email(stack: Any) -> Iterator[tuple[IConstruct, Mapping[str, str]]]:
    if stack.config.alarm_email:
        yield stack.monitoring.topic, {}


def _dead_letter_queues(stack: Any) -> Iterator[tuple[IConstruct, Mapping[str, str]]]:
    yield stack.task_queues.dead_letter_queue, {}
    yield stack.results.dead_letter_queue, {}


def _fleet_task_role(stack: Any) -> Iterator[tuple[IConstruct, Mapping[str, str]]]:
    if stack.fleet is not None:
        cluster = stack.fleet.cluster.node.default_child
        assert isinstance(cluster, CfnResource)
        yield stack.fleet.task_role, {"cluster": stack.resolve(stack.get_logical_id(cluster))}


def _fleet_execution_role(stack: Any) -> Iterator[tuple[IConstruct, Mapping[str, str]]]:
    if stack.fleet is not None:
        role = stack.fleet.task_definition.execution_role
        assert role is not None
        yield role, {}


def _one(path: Callable[[Any], Any | None]) -> Selector:
    """A selector of one construct (``None``, or a missing fleet, selects nothing)."""

    def select(stack: Any) -> Iterator[tuple[IConstruct, Mapping[str, str]]]:
        construct = path(stack)
        if construct is not None:
            yield construct, {}

    return select


def _gpu(path: Callable[[Any], Any]) -> Selector:
    """A construct of the GPU fleet's Auto Scaling group (nothing on Fargate or without a fleet)."""

    def construct(stack: Any) -> Any | None:
        asg = stack.fleet.auto_scaling_group if stack.fleet is not None else None
        return None if asg is None else path(asg)

    return _one(construct)


SCOPES: dict[str, Selector] = {
    "function roles": _function_roles,
    "function roles, KMS queue key": _function_roles_with_queue_key,
    "event-source consumers": _event_source_consumers,
    "splitter": _one(lambda s: s.functions.splitter),
    "stack": _one(lambda s: s),
    "worker policy": _one(lambda s: s.worker_access.policy),
    "worker policy, each dataset bucket": _dataset_buckets,
    "alarm topic with an email": _alarm_topic_with_email,
    "dead-letter queues": _dead_letter_queues,
    "splitter failure queue": _one(lambda s: s.functions.splitter_failure_queue),
    "pipeline function": _one(lambda s: s.functions.pipeline),
    "pipeline failure queue": _one(lambda s: s.functions.pipeline_failure_queue),
    "parked results queue": _one(lambda s: s.results.parked_queue),
    "fleet execution role": _fleet_execution_role,
    "fleet task role": _fleet_task_role,
    "fleet task definition": _one(lambda s: s.fleet.task_definition if s.fleet else None),
    "fleet lanes role": _one(lambda s: s.fleet.lanes.function.role if s.fleet else None),
    "fleet lanes function": _one(lambda s: s.fleet.lanes.function if s.fleet else None),
    "fleet lanes schedule": _one(lambda s: s.fleet.lanes.rule if s.fleet else None),
    "GPU instance role": _gpu(lambda asg: asg.role),
    "GPU auto scaling group": _gpu(lambda asg: asg),
}

_IAM5 = "AwsSolutions::AwsSolutions-IAM5"
_S3_GRANT = (
    "{action} comes from Bucket.grant_read/grant_put on the artifact bucket alone "
    "(read objects and versions, abort own multipart uploads)."
)
_KMS_GRANT = (
    "{action} comes from Queue.grant_send_messages/consume on queues encrypted with the one shardq "
    "queue key, and is scoped to that key."
)

RULES: tuple[NagRule, ...] = (
    # -- the Lambda roles ------------------------------------------------------------------------
    NagRule(
        f"{_IAM5}[Resource::*]",
        "function roles",
        "X-Ray PutTraceSegments/PutTelemetryRecords support no resource-level permissions; CDK adds them "
        "for active tracing.",
    ),
    NagRule(
        f"{_IAM5}[Resource::<JobTable.Arn>/index/*]",
        "function roles",
        "grant_read_write_data covers the job table's indexes: the runtime queries the by_status GSI.",
    ),
    NagRule(
        f"{_IAM5}[{_BUCKET_OBJECTS}]",
        "function roles",
        "Job artifacts have runtime-generated keys (jobs/<job_id>/...); object access is scoped to this "
        "one bucket.",
    ),
    *(
        NagRule(f"{_IAM5}[Action::{a}]", "function roles", _S3_GRANT.format(action=a))
        for a in ("s3:GetObject*", "s3:GetBucket*", "s3:List*", "s3:Abort*")
    ),
    *(
        NagRule(f"{_IAM5}[Action::{a}]", "function roles, KMS queue key", _KMS_GRANT.format(action=a))
        for a in ("kms:ReEncrypt*", "kms:GenerateDataKey*")
    ),
    # -- the Lambdas -----------------------------------------------------------------------------
    NagRule(
        "Serverless::Serverless-LambdaDLQ",
        "event-source consumers",
        "Invoked only synchronously by an SQS event source mapping, never asynchronously: failed messages "
        "go to the source queue's DLQ through its redrive policy.",
    ),
    NagRule(
        "Serverless::Serverless-LambdaDLQ",
        "splitter",
        "Async failures go to an on-failure destination (SplitterFailureQueue), which supersedes the "
        "legacy DeadLetterConfig and records the request and the error.",
    ),
    NagRule(
        "Serverless::Serverless-LambdaDLQ",
        "pipeline function",
        "Async failures go to an on-failure destination (PipelineFailureQueue), which supersedes the "
        "legacy DeadLetterConfig; the Job Finished rule's DLQ is the same queue.",
    ),
    NagRule(
        "Serverless::Serverless-LambdaEventSourceMappingDestination",
        "stack",
        "SQS event source mappings support no on-failure destination (only streams and Kafka do); each "
        "source queue's redrive policy sends failures to its DLQ.",
    ),
    # -- the worker policy -----------------------------------------------------------------------
    NagRule(
        f"{_IAM5}[{_BUCKET_OBJECTS}]",
        "worker policy",
        "Workers read dataset and model objects of any job in the artifact bucket; keys are generated per "
        "job at runtime.",
    ),
    NagRule(
        f"{_IAM5}[Resource::<ArtifactBucket.Arn>/jobs/*]",
        "worker policy",
        "Workers write artifacts under jobs/<job_id>/ whose ids exist only at runtime; scoped to the prefix.",
    ),
    NagRule(
        f"{_IAM5}[Resource::<ArtifactBucket.Arn>/checkpoints/*]",
        "worker policy",
        "Workers write and prune task checkpoints under checkpoints/<job_id>/ whose ids exist only at "
        "runtime; scoped to the prefix.",
    ),
    NagRule(
        f"{_IAM5}[Resource::{{arn}}/*]",
        "worker policy, each dataset bucket",
        "Read-only access to the objects of a dataset bucket named in dataset_bucket_arns.",
    ),
    # -- topics and queues -----------------------------------------------------------------------
    NagRule(
        "Serverless::Serverless-SNSRedrivePolicy",
        "alarm topic with an email",
        "The only subscription is the optional alarm email; the alarm state stays in CloudWatch and on "
        "the dashboard, so an undelivered email loses nothing a DLQ would keep.",
    ),
    NagRule(
        "Serverless::Serverless-SQSRedrivePolicy",
        "dead-letter queues",
        "This queue is a dead-letter queue; a DLQ of a DLQ would only move the problem.",
    ),
    NagRule(
        "AwsSolutions::AwsSolutions-SQS3",
        "splitter failure queue",
        "This queue is the splitter's on-failure destination, the end of the line like a DLQ; an alarm "
        "fires on its first message.",
    ),
    NagRule(
        "Serverless::Serverless-SQSRedrivePolicy",
        "splitter failure queue",
        "On-failure destination queue: it is itself the dead-letter store for async splitter invocations.",
    ),
    NagRule(
        "AwsSolutions::AwsSolutions-SQS3",
        "pipeline failure queue",
        "This queue is the pipeline function's on-failure destination and its rule's DLQ: the end of "
        "the line like a DLQ.",
    ),
    NagRule(
        "Serverless::Serverless-SQSRedrivePolicy",
        "pipeline failure queue",
        "On-failure destination and rule DLQ: it is itself the dead-letter store of pipeline triggers.",
    ),
    NagRule(
        "AwsSolutions::AwsSolutions-SQS3",
        "parked results queue",
        "Dead results no job can record are parked here with the reason (shardq.core.parking): the end "
        "of the line like a DLQ, read by people (`shardq dlq show`), alarmed on its first message.",
    ),
    NagRule(
        "Serverless::Serverless-SQSRedrivePolicy",
        "parked results queue",
        "Nothing consumes this queue, so nothing could exhaust a receive count; it is the dead-letter "
        "store of results no job can record.",
    ),
    # -- the optional worker fleet (stacks/components/fleet/) ------------------------------------
    NagRule(
        f"{_IAM5}[Resource::*]",
        "fleet execution role",
        "ecr:GetAuthorizationToken supports no resource-level permissions; image pulls and log writes are "
        "scoped to the image repository and the worker log group.",
    ),
    NagRule(
        f"{_IAM5}[Resource::arn:<AWS::Partition>:ecs:<AWS::Region>:<AWS::AccountId>:task/<{{cluster}}>/*]",
        "fleet task role",
        "A worker sets scale-in protection on its own task, whose id exists only at run time; scoped to "
        "the tasks of the fleet's cluster.",
    ),
    NagRule(
        "AwsSolutions::AwsSolutions-ECS2",
        "fleet task definition",
        "The environment holds queue URLs, the table name, the region and worker settings: "
        "configuration, no secrets (credentials come from the task role).",
    ),
    NagRule(
        f"{_IAM5}[Resource::*]",
        "fleet lanes role",
        "cloudwatch:PutMetricData supports no resource-level permissions; the statement is conditioned on "
        "the shardq/Fleet namespace.",
    ),
    NagRule(
        "Serverless::Serverless-LambdaDLQ",
        "fleet lanes function",
        "Invoked by a one-minute schedule without retries: a failed run leaves one gauge datapoint "
        "missing (the scaling rule then caps at fleet_max_workers) and the next run publishes afresh; a "
        "DLQ would keep stale events nobody replays.",
    ),
    NagRule(
        "Serverless::Serverless-EventBusDLQ",
        "fleet lanes schedule",
        "A schedule's event is only worth its minute: an undelivered one is superseded by the next, so a "
        "DLQ of them would hold nothing to act on.",
    ),
    NagRule(
        f"{_IAM5}[Resource::*]",
        "GPU instance role",
        "The ECS agent's DiscoverPollEndpoint, GetAuthorizationToken and Poll (conditioned on this "
        "cluster) and CloudWatch PutMetricData (conditioned on the shardq/Fleet namespace) support no "
        "resource-level permissions.",
    ),
    NagRule(
        f"{_IAM5}[Action::ecs:Submit*]",
        "GPU instance role",
        "ecs:Submit* is the ECS agent's state reporting, added by the CDK's capacity provider and scoped "
        "to the fleet's cluster.",
    ),
    NagRule(
        "AwsSolutions::AwsSolutions-EC26",
        "GPU auto scaling group",
        "The rule cannot read a launch template referenced by a mixed instances policy; the template's "
        "root volume is encrypted gp3 (asserted in tests/infra/test_fleet.py).",
    ),
    NagRule(
        "AwsSolutions::AwsSolutions-AS3",
        "GPU auto scaling group",
        "A scale-to-zero fleet launches and terminates instances all day: mailing each event would drown "
        "the alarms; the activity history and the FleetCannotPlaceTasks alarm cover failures.",
    ),
)


def acknowledge_findings(stack: Any, rules: tuple[NagRule, ...] = RULES) -> list[NagAcknowledgment]:
    """Acknowledge each rule at every scope its selector finds in ``stack``; return what was applied.

    Parameters
    ----------
    stack
        The :class:`stacks.shardq_stack.ShardqStack` (read through the attributes the selectors use).
    rules
        The accepted findings; :data:`RULES` by default.

    Raises
    ------
    KeyError
        When a rule names a selector that :data:`SCOPES` does not define.
    """
    applied = [
        NagAcknowledgment(scope, rule.finding.format(**params), rule.reason)
        for rule in rules
        for scope, params in SCOPES[rule.where](stack)
    ]
    for ack in applied:
        Validations.of(ack.scope).acknowledge(Acknowledgment(id=ack.id, reason=ack.reason))
    return applied
