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


def test_a_message_in_the_pipeline_failure_queue_raises_an_alarm(synth: Synth) -> None:
    queue = "PipelineFailureQueue"
    (alarm,) = [
        a["Properties"]
        for a in synth.of_type("AWS::CloudWatch::Alarm").values()
        if a["Properties"]["Dimensions"]
        == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue, "QueueName"]}}]
    ]
    topic = _logical_id(synth, synth.stack.monitoring.topic)
    assert alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert (alarm["Statistic"], alarm["Threshold"], alarm["ComparisonOperator"]) == (
        "Maximum",
        0,
        "GreaterThanThreshold",
    )
    assert alarm["AlarmActions"] == [{"Ref": topic}]
    assert "may still be WAITING" in alarm["AlarmDescription"]
    (dashboard,) = synth.of_type("AWS::CloudWatch::Dashboard").values()
    assert "pipeline failures" in str(dashboard["Properties"]["DashboardBody"])


# -- the customer-key variant (tests/infra/test_variants.py's VARIANTS: queue_encryption "kms") -----


def test_under_a_customer_key_eventbridge_may_use_the_key_for_this_rule_only(variants_synth: Synth) -> None:
    from stacks.components.pipeline_trigger import DLQ_KEY_ACTIONS

    synth = variants_synth
    queue = synth.resources["PipelineFailureQueue"]["Properties"]
    (key_id,) = [
        k
        for k, r in synth.of_type("AWS::KMS::Key").items()
        if r["Properties"].get("Description", "").startswith("Encrypts the shardq queues")
    ]
    # the queue is under the customer key, not SQS-managed SSE
    assert queue["KmsMasterKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}
    assert "SqsManagedSseEnabled" not in queue
    # the rule is named (generated from the stack name), so its ARN is written without a reference
    rule_id = _logical_id(synth, synth.stack.pipeline_trigger.rule)
    name = synth.resources[rule_id]["Properties"]["Name"]
    assert name.startswith("shardq-dev-pipelines-") and len(name) <= 64
    arn = {
        "Fn::Join": [
            "",
            [
                "arn:",
                {"Ref": "AWS::Partition"},
                ":events:",
                {"Ref": "AWS::Region"},
                ":",
                {"Ref": "AWS::AccountId"},
                f":rule/{name}",
            ],
        ]
    }
    statements = synth.resources[key_id]["Properties"]["KeyPolicy"]["Statement"]
    mine = [s for s in statements if s.get("Principal") == {"Service": "events.amazonaws.com"}]
    assert mine == [
        {
            "Sid": "PipelineRuleDeadLetters",
            "Effect": "Allow",
            "Principal": {"Service": "events.amazonaws.com"},
            "Action": sorted(DLQ_KEY_ACTIONS),
            "Resource": "*",
            "Condition": {"ArnEquals": {"aws:SourceArn": arn}},
        }
    ]
    # and that ARN is the rule's own (the queue policy CDK writes for the DLQ names it by reference)
    (policy,) = [
        p["Properties"]
        for p in synth.of_type("AWS::SQS::QueuePolicy").values()
        if p["Properties"]["Queues"] == [{"Ref": "PipelineFailureQueue"}]
    ]
    sends = [
        s
        for s in policy["PolicyDocument"]["Statement"]
        if s.get("Principal") == {"Service": "events.amazonaws.com"}
    ]
    assert sends and all(
        s["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": [rule_id, "Arn"]}}} for s in sends
    )
    (rule,) = [r for k, r in synth.of_type("AWS::Events::Rule").items() if k == rule_id]
    assert rule["Properties"]["Targets"][0]["DeadLetterConfig"] == {
        "Arn": {"Fn::GetAtt": ["PipelineFailureQueue", "Arn"]}
    }


def test_an_imported_queue_key_warns_with_the_statement_to_add() -> None:
    from aws_cdk import App, Stack
    from aws_cdk import aws_events as events
    from aws_cdk import aws_kms as kms
    from aws_cdk import aws_lambda as lambda_
    from aws_cdk import aws_sqs as sqs
    from aws_cdk.assertions import Annotations

    from stacks.components.pipeline_trigger import PipelineTrigger

    stack = Stack(App(), "T")
    key = kms.Key.from_key_arn(
        stack, "K", "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    )
    PipelineTrigger(
        stack,
        "P",
        function=lambda_.Function.from_function_name(stack, "F", "f"),
        event_bus=events.EventBus.from_event_bus_name(stack, "B", "default"),
        dead_letter_queue=sqs.Queue(
            stack, "Q", encryption=sqs.QueueEncryption.KMS, encryption_master_key=key
        ),
    )
    Annotations.from_stack(stack).has_warning(
        "/T/P",
        Match.string_like_regexp(
            r".*cannot let EventBridge .*events\.amazonaws\.com.*kms:GenerateDataKey.*kms:Decrypt.*"
            r"aws:SourceArn arn:<partition>:events:<region>:<account>:rule/T-pipelines-[0-9a-f]{8} .*"
        ),
    )
