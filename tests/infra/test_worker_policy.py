"""The worker policy grants exactly what a worker calls, per resource, and nothing else.

The pin is written out here (not read from stacks/components/worker_access.py), so widening the
policy fails a test; and the AWS calls in shardq/worker/ are read from the source and mapped to
the rights they need, so a new call without its right fails too. The cloud-side rules run on the
same default synth (cfn-lint, checkov: tests/infra/rulepacks.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra.conftest import Synth
from tests.infra.rulepacks import RulePackRun, assert_cfn_lint_passes, assert_checkov_passes

ROOT = Path(__file__).resolve().parents[2]

TASK_QUEUE = repr({"Fn::GetAtt": ["TaskQueue", "Arn"]})
RESULTS_QUEUE = repr({"Fn::GetAtt": ["ResultsQueue", "Arn"]})
FAST_RESULTS_QUEUE = repr({"Fn::GetAtt": ["FastResultsQueue", "Arn"]})
JOB_TABLE = repr({"Fn::GetAtt": ["JobTable", "Arn"]})
BUCKET = repr({"Fn::GetAtt": ["ArtifactBucket", "Arn"]})
BUCKET_OBJECTS = repr({"Fn::Join": ["", [{"Fn::GetAtt": ["ArtifactBucket", "Arn"]}, "/*"]]})
JOB_OBJECTS = repr({"Fn::Join": ["", [{"Fn::GetAtt": ["ArtifactBucket", "Arn"]}, "/jobs/*"]]})
CHECKPOINT_OBJECTS = repr({"Fn::Join": ["", [{"Fn::GetAtt": ["ArtifactBucket", "Arn"]}, "/checkpoints/*"]]})
STACK = repr({"Ref": "AWS::StackId"})

WORKER_POLICY = {
    # SendMessage: a graceful release re-sends the task (shardq.worker.release) so a Spot storm
    # costs no receives toward the DLQ; new tasks still come from the aggregator Lambda alone
    TASK_QUEUE: {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
        "sqs:SendMessage",
    },
    RESULTS_QUEUE: {"sqs:SendMessage"},
    # round-closing results (shardq.core.result_routes): the zero-window queue, send only
    FAST_RESULTS_QUEUE: {"sqs:SendMessage"},
    JOB_TABLE: {"dynamodb:GetItem"},
    BUCKET: {"s3:ListBucket"},
    BUCKET_OBJECTS: {"s3:GetObject"},
    JOB_OBJECTS: {"s3:PutObject", "s3:AbortMultipartUpload"},
    # task checkpoints: the worker deletes the one its pointer no longer names (it keeps two)
    CHECKPOINT_OBJECTS: {"s3:PutObject", "s3:AbortMultipartUpload", "s3:DeleteObject"},
    STACK: {"cloudformation:DescribeStacks"},
}

# boto3 client method → the IAM action it needs (download_file is HeadObject + GetObject, both
# s3:GetObject; upload_file is PutObject or a multipart upload, aborted on failure).
CALL_ACTIONS = {
    "receive_message": {"sqs:ReceiveMessage"},
    "delete_message": {"sqs:DeleteMessage"},
    "change_message_visibility": {"sqs:ChangeMessageVisibility"},
    "get_queue_attributes": {"sqs:GetQueueAttributes"},
    "send_message": {"sqs:SendMessage"},
    "get_item": {"dynamodb:GetItem"},
    "get_object": {"s3:GetObject"},
    "download_file": {"s3:GetObject"},
    "upload_file": {"s3:PutObject", "s3:AbortMultipartUpload"},
    "put_object": {"s3:PutObject"},
    "delete_objects": {"s3:DeleteObject"},
}


@pytest.fixture(scope="module")
def synth(default_synth: Synth) -> Synth:
    return default_synth


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def worker_policy(synth: Synth) -> dict[str, set[str]]:
    (policy,) = synth.of_type("AWS::IAM::ManagedPolicy").values()
    by_resource: dict[str, set[str]] = {}
    for st in policy["Properties"]["PolicyDocument"]["Statement"]:
        assert st["Effect"] == "Allow"
        assert "Condition" not in st
        for resource in _as_list(st["Resource"]):
            by_resource.setdefault(repr(resource), set()).update(_as_list(st["Action"]))
    return by_resource


def test_worker_policy_actions_per_resource(synth: Synth) -> None:
    assert worker_policy(synth) == WORKER_POLICY


def test_every_right_is_one_a_worker_uses_and_every_call_has_its_right(synth: Synth) -> None:
    # The worker's AWS calls: shardq/worker/* and the one JobStore read it makes (state_of/status_of
    # are GetItem), plus DescribeStacks for `shardq worker --stack`.
    # Import lines name modules (boto3.s3.transfer), not calls.
    lines = (line for p in (ROOT / "shardq" / "worker").glob("*.py") for line in p.read_text().splitlines())
    source = "\n".join(line for line in lines if not line.lstrip().startswith(("from ", "import ")))
    # Called, or handed to a wrapper (self._s3(what, self.s3.upload_file, ...)).
    calls = set(re.findall(r"\b(?:sqs|s3|ddb)\.([a-z_]+)\b", source)) | {"get_item"}
    unknown = calls - set(CALL_ACTIONS)
    assert not unknown, f"map these worker calls to their IAM actions in CALL_ACTIONS: {unknown}"
    needed = set().union(*(CALL_ACTIONS[c] for c in calls)) | {"cloudformation:DescribeStacks"}
    granted = set().union(*worker_policy(synth).values())
    # s3:ListBucket is the one right no call names: it turns a missing key into 404, not 403.
    assert granted - needed == {"s3:ListBucket"}
    assert needed <= granted


def test_the_checkpoint_prefix_the_policy_grants_is_the_one_workers_write() -> None:
    from shardq.core import checkpoint_keys
    from stacks.components import job_store, worker_access

    assert worker_access.CHECKPOINT_PREFIX == job_store.CHECKPOINT_PREFIX == checkpoint_keys.ROOT
    assert job_store.CHECKPOINT_EXPIRY_DAYS == checkpoint_keys.EXPIRE_DAYS


def test_the_job_store_reads_a_worker_makes_are_gets(synth: Synth) -> None:
    from shardq.core import jobstore

    text = Path(jobstore.__file__).read_text()
    for method in ("state_of", "status_of"):
        body = text[text.index(f"    def {method}(") :].split("\n    def ", 1)[0]
        assert "self.ddb.get_item(" in body and "self.ddb.query(" not in body, method


def test_cfn_lint_default(rule_packs: RulePackRun) -> None:
    assert_cfn_lint_passes(rule_packs, "default")


def test_checkov_default(rule_packs: RulePackRun) -> None:
    assert_checkov_passes(rule_packs, "default")
