"""The fast results queue (issue #27): round-closing results reach the aggregator with no window.

Assertions on the default synth (cdk-nag ran on it and passed: ``tests.infra.conftest.synthesize``).
"""

from __future__ import annotations

from typing import Any

import pytest

from shardq.core import latency
from shardq.core.result_routes import FAST_BATCH_SIZE, FAST_BATCH_WINDOW_SECONDS
from tests.infra.conftest import Synth


@pytest.fixture(scope="module")
def synth(default_synth: Synth) -> Synth:
    return default_synth


def _target(ref: Any) -> str:
    return str(ref.get("Fn::GetAtt", [ref.get("Ref")])[0])


def _mappings_on(synth: Synth, queue: str) -> list[dict[str, Any]]:
    return [
        m["Properties"]
        for m in synth.of_type("AWS::Lambda::EventSourceMapping").values()
        if _target(m["Properties"]["EventSourceArn"]) == queue
    ]


def test_the_aggregator_reads_the_fast_queue_in_small_batches_with_no_window(synth: Synth) -> None:
    (fast,) = _mappings_on(synth, "FastResultsQueue")
    (bulk,) = _mappings_on(synth, "ResultsQueue")
    assert fast["BatchSize"] == FAST_BATCH_SIZE == 10  # AWS allows no window only up to 10
    assert fast.get("MaximumBatchingWindowInSeconds", 0) == FAST_BATCH_WINDOW_SECONDS == 0
    assert fast["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # the same function and the same cap on DynamoDB write pressure as the bulk source
    assert fast["FunctionName"] == bulk["FunctionName"]
    assert fast["ScalingConfig"] == bulk["ScalingConfig"] == {"MaximumConcurrency": 5}
    # the bulk source keeps its big batches and cdk.json's window for floods of results
    assert (bulk["BatchSize"], bulk["MaximumBatchingWindowInSeconds"]) == (100, 5)


def test_the_fast_queue_is_secured_like_the_bulk_one_and_shares_its_dlq(synth: Synth) -> None:
    fast, bulk = (synth.resources[q]["Properties"] for q in ("FastResultsQueue", "ResultsQueue"))
    for key in ("VisibilityTimeout", "MessageRetentionPeriod", "SqsManagedSseEnabled", "RedrivePolicy"):
        assert fast[key] == bulk[key], key
    assert _target(fast["RedrivePolicy"]["deadLetterTargetArn"]) == "ResultsDlq"
    assert "FifoQueue" not in fast  # standard: results need no order


def test_only_workers_may_send_to_the_fast_queue_and_only_the_aggregator_consumes_it(synth: Synth) -> None:
    # Least privilege: the Lambdas send ticks to the bulk queue; the fast queue is for worker results.
    aggregator_role = _target(
        synth.resources[synth.stack.get_logical_id(synth.stack.functions.aggregator.node.default_child)][  # type: ignore[arg-type]
            "Properties"
        ]["Role"]
    )
    grants = []
    for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for policy in synth.of_type(kind).values():
            for st in policy["Properties"]["PolicyDocument"]["Statement"]:
                resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
                if any(isinstance(r, dict) and _target(r) == "FastResultsQueue" for r in resources):
                    actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                    roles = [_target(r) for r in policy["Properties"].get("Roles", [])]
                    grants.append((kind, roles, set(actions)))
    sends = [g for g in grants if "sqs:SendMessage" in g[2]]
    assert sends == [("AWS::IAM::ManagedPolicy", [], {"sqs:SendMessage"})]  # the worker policy
    consumers = [g for g in grants if "sqs:ReceiveMessage" in g[2]]
    assert [roles for _, roles, _ in consumers] == [[aggregator_role]]


def test_an_undrained_fast_queue_alarms_and_its_url_is_an_output(synth: Synth) -> None:
    synth.template.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "MetricName": "ApproximateAgeOfOldestMessage",
            "Dimensions": [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["FastResultsQueue", "QueueName"]}}],
            "Threshold": 600,
        },
    )
    outputs = synth.template.to_json()["Outputs"]
    assert outputs["FastResultsQueueUrl"]["Value"] == {"Ref": "FastResultsQueue"}


def test_the_latency_model_reads_this_template_and_meets_the_targets(synth: Synth) -> None:
    paths = latency.paths_from_template(synth.template.to_json())
    assert paths.fast is not None and paths.fast.window_s == 0 and paths.bulk.window_s == 5
    r = latency.report(paths, 2)
    assert r["after"]["p50_s"] <= 0.5 and r["after"]["p99_s"] <= 3.0
    assert r["before"]["p50_s"] >= 10
