"""The pipeline trigger: Job Finished events reach the pipeline Lambda; nothing is lost silently.

Assertions on the default synth (cdk-nag ran on it and passed: ``tests.infra.conftest.synthesize``).
"""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk import Duration
from aws_cdk.assertions import Match

from stacks.components._props import ComponentPropsError
from tests.infra.conftest import Synth


@pytest.fixture(scope="module")
def synth(default_synth: Synth) -> Synth:
    return default_synth


def _logical_id(synth: Synth, construct: Any) -> str:
    return str(synth.stack.resolve(synth.stack.get_logical_id(construct.node.default_child)))


def test_job_finished_events_invoke_the_pipeline_function_with_a_dlq(synth: Synth) -> None:
    fn = _logical_id(synth, synth.stack.functions.pipeline)
    queue = "PipelineFailureQueue"  # pinned (stacks.shardq_stack.PINNED_LOGICAL_IDS)
    (rule,) = [
        r["Properties"]
        for r in synth.of_type("AWS::Events::Rule").values()
        if r["Properties"].get("EventPattern", {}).get("detail-type") == ["Job Finished"]
    ]
    # the finisher's event, on the bus the functions publish to (shardq.core.finalize)
    assert rule["EventPattern"] == {"source": ["shardq"], "detail-type": ["Job Finished"]}
    assert rule.get("EventBusName", "default") == "default"
    assert rule["State"] == "ENABLED"
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [fn, "Arn"]}
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": [queue, "Arn"]}}
    assert target["RetryPolicy"] == {"MaximumRetryAttempts": 8, "MaximumEventAgeInSeconds": 21600}
    # EventBridge may invoke it (and only this rule)
    synth.template.has_resource_properties(
        "AWS::Lambda::Permission",
        {
            "Action": "lambda:InvokeFunction",
            "Principal": "events.amazonaws.com",
            "FunctionName": {"Fn::GetAtt": [fn, "Arn"]},
            "SourceArn": Match.any_value(),
        },
    )


def test_the_pipeline_function_retries_then_keeps_failures_and_can_start_jobs(synth: Synth) -> None:
    fn = _logical_id(synth, synth.stack.functions.pipeline)
    queue = "PipelineFailureQueue"  # pinned (stacks.shardq_stack.PINNED_LOGICAL_IDS)
    synth.template.has_resource_properties(
        "AWS::Lambda::EventInvokeConfig",
        {
            "FunctionName": {"Ref": fn},
            "MaximumRetryAttempts": 2,
            "DestinationConfig": {"OnFailure": {"Destination": {"Fn::GetAtt": [queue, "Arn"]}}},
        },
    )
    props = synth.resources[fn]["Properties"]
    assert props["Handler"] == "lambdas.pipeline.handler"
    assert props["Environment"]["Variables"]["SHARDQ_SPLITTER_FUNCTION"] == {
        "Ref": _logical_id(synth, synth.stack.functions.splitter)
    }
    # the data-plane grants every function has: the table, the task queue, the bucket, the event bus
    role = _logical_id(synth, synth.stack.functions.pipeline.role)
    actions = set()
    for policy in synth.of_type("AWS::IAM::Policy").values():
        if {"Ref": role} in policy["Properties"]["Roles"]:
            for st in policy["Properties"]["PolicyDocument"]["Statement"]:
                actions |= set(st["Action"] if isinstance(st["Action"], list) else [st["Action"]])
    assert {
        "dynamodb:UpdateItem",
        "dynamodb:Query",
        "sqs:SendMessage",
        "s3:PutObject",
        "events:PutEvents",
    } <= actions
    # the failure queue is encrypted and TLS-only, as every shardq queue
    q = synth.resources[queue]["Properties"]
    assert q["SqsManagedSseEnabled"] is True
    assert q["MessageRetentionPeriod"] == 14 * 24 * 3600


def test_bad_retry_attempts_are_refused_with_the_range() -> None:
    from aws_cdk import App, Stack
    from aws_cdk import aws_events as events
    from aws_cdk import aws_lambda as lambda_
    from aws_cdk import aws_sqs as sqs

    from stacks.components.pipeline_trigger import PipelineTrigger

    stack = Stack(App(), "T")
    fn = lambda_.Function.from_function_name(stack, "F", "f")
    with pytest.raises(ComponentPropsError, match=r"retry_attempts=200: EventBridge accepts 0..185"):
        PipelineTrigger(
            stack,
            "P",
            function=fn,
            event_bus=events.EventBus.from_event_bus_name(stack, "B", "default"),
            dead_letter_queue=sqs.Queue(stack, "Q"),
            retry_attempts=200,
            max_event_age=Duration.hours(1),
        )
