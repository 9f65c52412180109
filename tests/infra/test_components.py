"""Each component validates its props when built and raises ONE error listing every problem."""

from __future__ import annotations

import pytest
from aws_cdk import App, Duration, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs

from stacks.components import JobStore, ResultsQueue, ShardqFunctions, TaskQueues, WorkerAccess
from stacks.components._props import ComponentPropsError
from stacks.components.fleet import FleetSizing, WorkerFleet
from stacks.components.functions import FunctionSize, FunctionSizing


@pytest.fixture
def stack() -> Stack:
    return Stack(App(), "Test")


def test_task_queues_reports_every_problem_at_once(stack: Stack) -> None:
    standard_dlq = sqs.Queue(stack, "StandardDlq")
    with pytest.raises(ComponentPropsError) as err:
        TaskQueues(
            stack,
            "TaskQueues",
            max_receive_count=0,
            visibility_timeout=Duration.seconds(50_000),
            dlq_consumer_timeout=Duration.hours(3),
            dead_letter_queue=standard_dlq,
        )
    message = str(err.value)
    assert message.startswith("TaskQueues: invalid props:")
    assert "max_receive_count=0: SQS accepts 1..1000; fix: use 5 or more" in message
    assert "visibility_timeout=50000s" in message
    assert "dlq_consumer_timeout=10800s" in message and "at most 7200 s" in message
    assert "a FIFO source queue can only redrive to a FIFO queue" in message
    assert message.count("\n  - ") == 4


def test_task_queues_accepts_a_fifo_dlq_of_your_own(stack: Stack) -> None:
    own = sqs.Queue(stack, "OwnDlq", fifo=True)
    queues = TaskQueues(
        stack,
        "TaskQueues",
        max_receive_count=5,
        visibility_timeout=Duration.minutes(5),
        dlq_consumer_timeout=Duration.minutes(1),
        dead_letter_queue=own,
    )
    assert queues.dead_letter_queue is own


def test_results_queue_rejects_a_consumer_timeout_beyond_the_visibility_cap(stack: Stack) -> None:
    with pytest.raises(ComponentPropsError, match=r"consumer_timeout=7201s.*at most 7200 s"):
        ResultsQueue(stack, "Results", consumer_timeout=Duration.seconds(7201), max_receive_count=5)


def test_results_queue_derives_its_visibility_from_the_consumer(stack: Stack) -> None:
    results = ResultsQueue(stack, "Results", consumer_timeout=Duration.seconds(45), max_receive_count=5)
    assert results.visibility_timeout.to_seconds() == 270


def test_functions_report_every_problem(stack: Stack) -> None:
    sizing = FunctionSizing(splitter=FunctionSize(memory_mb=64, timeout_seconds=1000))
    with pytest.raises(ComponentPropsError) as err:
        ShardqFunctions(
            stack,
            "Functions",
            code=lambda_.Code.from_inline("def handler(e, c): pass"),
            layers=[],
            environment={"AWS_REGION": "eu-west-1"},
            sizing=sizing,
            splitter_async_retry_attempts=3,
            aggregator_reserved_concurrency=0,
        )
    message = str(err.value)
    for expected in (
        "sizing.splitter.memory_mb=64",
        "sizing.splitter.timeout_seconds=1000",
        "splitter_async_retry_attempts=3",
        "aggregator_reserved_concurrency must be at least 1",
        "environment sets a variable Lambda reserves; fix: remove AWS_REGION",
    ):
        assert expected in message


def test_worker_access_rejects_bad_prefix_and_object_arns(stack: Stack) -> None:
    with pytest.raises(ComponentPropsError) as err:
        WorkerAccess(
            stack,
            "Workers",
            task_queue=sqs.Queue(stack, "T", fifo=True),
            results_queue=sqs.Queue(stack, "R"),
            job_table=dynamodb.Table(
                stack, "J", partition_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING)
            ),
            artifact_bucket=s3.Bucket(stack, "B"),
            dataset_bucket_arns=["arn:aws:s3:::data/train"],
            artifact_prefix="/jobs",
        )
    assert "artifact_prefix='/jobs'" in str(err.value)
    assert "not object ARNs" in str(err.value)


def test_job_store_rejects_sub_day_expiry(stack: Stack) -> None:
    with pytest.raises(ComponentPropsError, match="noncurrent_version_expiry must be a whole number of days"):
        JobStore(stack, "Store", noncurrent_version_expiry=Duration.hours(1))


@pytest.mark.parametrize(
    ("allow", "why"),
    [("", "names no module, so every worker would refuse to start"), ("my pkg.*", "is not module patterns")],
)
def test_worker_fleet_refuses_an_allow_list_its_workers_would_refuse(
    stack: Stack, allow: str, why: str
) -> None:
    with pytest.raises(ComponentPropsError) as err:
        WorkerFleet(
            stack,
            "Fleet",
            sizing=FleetSizing(kind="fargate"),
            task_queue=sqs.Queue(stack, "T", fifo=True),
            job_table=dynamodb.Table(
                stack, "J", partition_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING)
            ),
            lanes_code=lambda_.Code.from_inline("def handler(e, c): pass"),
            worker_policy=iam.ManagedPolicy(stack, "P", statements=[]),
            image=ecs.ContainerImage.from_registry("python:3.11-slim"),
            environment={},
            allow=allow,
            log_retention=logs.RetentionDays.ONE_WEEK,
        )
    assert f"allow={allow!r} {why}; fix: pass the patterns of the code the image ships" in str(err.value)
    assert not stack.node.try_find_child("Fleet").node.children  # refused before building anything
