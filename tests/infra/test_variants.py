"""The stack with every opt-in switched on: customer KMS key, high-throughput FIFO, datasets, email,
artifact expiry, no Powertools layer, reserved concurrency, a low maxReceiveCount (synthesized once)."""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk.assertions import Annotations, Match

from stacks.components.task_queues import MAX_RECEIVE_COUNT_WARNING_ID
from tests.infra.conftest import Synth
from tests.infra.rulepacks import RulePackRun, assert_cfn_lint_passes, assert_checkov_passes

DATASETS = "arn:aws:s3:::shardq-example-datasets"


# Every opt-in at once (synthesized once per session: conftest's ``variants_synth``, which the
# rule packs check too).
VARIANTS: dict[str, Any] = {
    "queue_encryption": "kms",
    "fifo_high_throughput": True,
    "max_receive_count": 3,
    "dataset_bucket_arns": [DATASETS],
    "alarm_email": "ml-oncall@example.com",
    "artifact_expiry_days": 30,
    "powertools_layer": False,
    "aggregator_reserved_concurrency": 10,
    "log_retention_days": 90,
    "stack_name": "shardq-dev",
    "tags": {"team": "ml"},
}


@pytest.fixture(scope="module")
def synth(variants_synth: Synth) -> Synth:
    return variants_synth


def _queue_key(synth: Synth) -> str:
    (key_id,) = [
        k
        for k, r in synth.of_type("AWS::KMS::Key").items()
        if r["Properties"].get("Description", "").startswith("Encrypts the shardq queues")
    ]
    return key_id


def test_every_queue_uses_the_customer_key(synth: Synth) -> None:
    key_id = _queue_key(synth)
    assert synth.resources[key_id]["Properties"]["EnableKeyRotation"] is True
    for logical_id, queue in synth.of_type("AWS::SQS::Queue").items():
        assert queue["Properties"]["KmsMasterKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}, logical_id
        assert "SqsManagedSseEnabled" not in queue["Properties"], logical_id


def _key_actions(statements: list[dict[str, Any]], key_id: str) -> set[str]:
    actions: set[str] = set()
    for st in statements:
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        if {"Fn::GetAtt": [key_id, "Arn"]} in resources:
            actions.update(st["Action"] if isinstance(st["Action"], list) else [st["Action"]])
    return actions


def _key_actions_by_handler(synth: Synth, key_id: str) -> dict[str, set[str]]:
    """Lambda handler → the queue key's actions its role's policies grant (roles with none left out)."""
    by_role: dict[str, set[str]] = {}
    for policy in synth.of_type("AWS::IAM::Policy").values():
        actions = _key_actions(policy["Properties"]["PolicyDocument"]["Statement"], key_id)
        for role in policy["Properties"]["Roles"]:
            if actions:
                by_role.setdefault(role["Ref"], set()).update(actions)
    by_handler: dict[str, set[str]] = {}
    for fn in synth.of_type("AWS::Lambda::Function").values():
        role_id = fn["Properties"]["Role"]["Fn::GetAtt"][0]
        if role_id in by_role:
            by_handler[fn["Properties"]["Handler"]] = by_role.pop(role_id)
    assert not by_role, f"key grants on roles no function uses: {sorted(by_role)}"
    return by_handler


# CDK's Queue.grant_send_messages grants the key's encrypt-decrypt set; grant_consume_messages
# adds nothing beyond kms:Decrypt, which that set already holds.
_SEND = {"kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey*", "kms:ReEncrypt*"}


def test_the_key_grants_follow_the_queue_grants(synth: Synth) -> None:
    key_id = _queue_key(synth)
    (worker_policy,) = synth.of_type("AWS::IAM::ManagedPolicy").values()
    # Workers receive tasks (Decrypt) and send results (GenerateDataKey): written as explicit
    # statements, with no Encrypt/ReEncrypt.
    assert _key_actions(worker_policy["Properties"]["PolicyDocument"]["Statement"], key_id) == {
        "kms:Decrypt",
        "kms:GenerateDataKey",
    }
    # Every function sends to the task queue (a round's tasks) and the results queue (a round's
    # tick), so each holds the send set; each consumes one queue, which needs kms:Decrypt: the
    # aggregator the results queue, the DLQ handler the task DLQ, the results DLQ handler the
    # results DLQ (issue #22), the splitter none. No other role touches the key.
    assert _key_actions_by_handler(synth, key_id) == {
        "lambdas.splitter.handler": _SEND,
        "lambdas.aggregator.handler": _SEND,
        "lambdas.dlq_handler.handler": _SEND,
        "lambdas.results_dlq_handler.handler": _SEND,
        # the pipeline function starts a follower's round 0, and its failures go to its on-failure
        # queue (PipelineFailureQueue, under the same key)
        "lambdas.pipeline.handler": _SEND,
    }


def test_high_throughput_fifo(synth: Synth) -> None:
    props = synth.resources["TaskQueue"]["Properties"]
    assert props["DeduplicationScope"] == "messageGroup"
    assert props["FifoThroughputLimit"] == "perMessageGroupId"
    assert props["RedrivePolicy"]["maxReceiveCount"] == 3
    # ... and the fan-out keeps enough SendMessageBatch calls in flight to use the partitions
    fan_out = {
        r["Properties"]["Environment"]["Variables"].get("SHARDQ_FANOUT_IN_FLIGHT")
        for r in synth.of_type("AWS::Lambda::Function").values()
    }
    assert fan_out == {"32"}
    # ... and a splitter with a full vCPU to feed them (512 MB is CPU-bound near 3,000 msgs/s)
    memory = {
        r["Properties"]["Handler"]: r["Properties"]["MemorySize"]
        for r in synth.of_type("AWS::Lambda::Function").values()
        if r["Properties"].get("Handler", "").startswith("lambdas.")
    }
    assert memory["lambdas.splitter.handler"] == 1769
    assert memory["lambdas.aggregator.handler"] == 512


def test_low_max_receive_count_warns_at_synth(synth: Synth) -> None:
    Annotations.from_stack(synth.stack).has_warning(
        "/Shardq/TaskQueues", Match.string_like_regexp("max_receive_count=3 is below 5.*crashed")
    )
    assert MAX_RECEIVE_COUNT_WARNING_ID.startswith("shardq:")


def test_dataset_buckets_are_readable_by_workers(synth: Synth) -> None:
    (policy,) = synth.of_type("AWS::IAM::ManagedPolicy").values()
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    flat: list[tuple[str, Any]] = [
        (a, r)
        for st in statements
        for a in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]])
        for r in (st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]])
    ]
    assert ("s3:ListBucket", DATASETS) in flat
    assert ("s3:GetObject", f"{DATASETS}/*") in flat
    assert not any(
        r == DATASETS or r == f"{DATASETS}/*" for a, r in flat if a not in ("s3:ListBucket", "s3:GetObject")
    )


def test_opt_ins(synth: Synth) -> None:
    synth.template.has_resource_properties(
        "AWS::SNS::Subscription", {"Protocol": "email", "Endpoint": "ml-oncall@example.com"}
    )
    rules = synth.resources["ArtifactBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    assert {
        "Id": "expire-job-artifacts",
        "Prefix": "jobs/",
        "ExpirationInDays": 30,
        "Status": "Enabled",
    } in rules
    for fn in synth.of_type("AWS::Lambda::Function").values():
        assert "Layers" not in fn["Properties"]
    aggregator = synth.stack.get_logical_id(synth.stack.functions.aggregator.node.default_child)  # type: ignore[arg-type]
    assert synth.resources[aggregator]["Properties"]["ReservedConcurrentExecutions"] == 10
    for log_group in synth.of_type("AWS::Logs::LogGroup").values():
        assert log_group["Properties"]["RetentionInDays"] == 90
    assert synth.stack.stack_name == "shardq-dev"
    assert {"Key": "team", "Value": "ml"} in synth.resources["JobTable"]["Properties"]["Tags"]


def test_nag_passes_and_the_dataset_acknowledgment_is_used(synth: Synth) -> None:
    open_findings = {
        (v["ruleName"], v["severity"]) for r in synth.report["pluginReports"] for v in r["violations"]
    }
    # The low maxReceiveCount warning is reported, and accepted: warnings do not fail synth.
    assert open_findings == {(f"Annotation::{MAX_RECEIVE_COUNT_WARNING_ID}", "warning")}
    used = {
        s["acknowledgedId"] for r in synth.report["pluginReports"] for s in r.get("suppressedViolations", [])
    }
    assert f"AwsSolutions::AwsSolutions-IAM5[Resource::{DATASETS}/*]" in used
    assert {a.id for a in synth.stack.acknowledgments} == used


# -- third-party rule packs (tests/infra/rulepacks.py) on the customer-key template ---------------


def test_cfn_lint_kms(rule_packs: RulePackRun) -> None:
    assert_cfn_lint_passes(rule_packs, "kms")


def test_checkov_kms(rule_packs: RulePackRun) -> None:
    assert_checkov_passes(rule_packs, "kms")
