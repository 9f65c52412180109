"""The per-test resources (shardq/local/resources.py) are the stack's own, read from its template.

One synth for the module (``default_synth``); the local cloud gets the provisioned copies.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from shardq.local.resources import TemplateError, provision, stack_template
from stacks.shardq_stack import PINNED_LOGICAL_IDS
from tests.infra.conftest import Synth

STATEFUL = ("TaskQueue", "TaskDlq", "ResultsQueue", "ResultsDlq", "JobTable", "ArtifactBucket")


@pytest.fixture(scope="module")
def template(default_synth: Synth) -> dict[str, Any]:
    return default_synth.template.to_json()


def _attributes(sqs: Any, url: str) -> dict[str, str]:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]


def test_the_resources_copied_are_the_pinned_stateful_ones() -> None:
    assert set(STATEFUL) <= set(PINNED_LOGICAL_IDS)


def test_cached_synth_is_the_apps_template(template: dict[str, Any]) -> None:
    """The subprocess synth the fixtures use gives what the app synthesizes in process."""
    cached = stack_template()["Resources"]
    for logical_id in STATEFUL:
        assert cached[logical_id]["Properties"] == template["Resources"][logical_id]["Properties"], logical_id


def test_queues_carry_the_stacks_attributes_and_redrive(
    template: dict[str, Any], clients: dict[str, Any]
) -> None:
    sqs = clients["sqs"]
    settings = provision(sqs, clients["dynamodb"], clients["s3"], template=template)
    resources = template["Resources"]
    tasks = _attributes(sqs, settings.task_queue_url)
    props = resources["TaskQueue"]["Properties"]
    assert tasks["FifoQueue"] == "true" and tasks["ContentBasedDeduplication"] == "true"
    assert tasks["VisibilityTimeout"] == str(props["VisibilityTimeout"])
    assert tasks["MessageRetentionPeriod"] == str(props["MessageRetentionPeriod"])
    redrive = json.loads(tasks["RedrivePolicy"])
    assert (
        int(redrive["maxReceiveCount"])
        == props["RedrivePolicy"]["maxReceiveCount"]
        == settings.max_receive_count
    )
    dlq_url = sqs.get_queue_url(QueueName=redrive["deadLetterTargetArn"].rsplit(":", 1)[-1])["QueueUrl"]
    dlq = _attributes(sqs, dlq_url)
    assert dlq["FifoQueue"] == "true"  # a FIFO queue's DLQ is FIFO
    assert dlq["MessageRetentionPeriod"] == str(resources["TaskDlq"]["Properties"]["MessageRetentionPeriod"])
    results = _attributes(sqs, settings.results_queue_url)
    assert results["VisibilityTimeout"] == str(resources["ResultsQueue"]["Properties"]["VisibilityTimeout"])
    assert "FifoQueue" not in results or results["FifoQueue"] == "false"
    assert json.loads(results["RedrivePolicy"])["deadLetterTargetArn"].endswith("-results-dlq")


def test_table_has_the_stacks_keys_index_and_ttl(template: dict[str, Any], clients: dict[str, Any]) -> None:
    ddb = clients["dynamodb"]
    settings = provision(clients["sqs"], ddb, clients["s3"], template=template)
    table = ddb.describe_table(TableName=settings.job_table)["Table"]
    props = template["Resources"]["JobTable"]["Properties"]
    assert table["KeySchema"] == props["KeySchema"]
    assert {(g["IndexName"], json.dumps(g["KeySchema"])) for g in table["GlobalSecondaryIndexes"]} == {
        (g["IndexName"], json.dumps(g["KeySchema"])) for g in props["GlobalSecondaryIndexes"]
    }
    ttl = ddb.describe_time_to_live(TableName=settings.job_table)["TimeToLiveDescription"]
    assert ttl.get("AttributeName") == props["TimeToLiveSpecification"]["AttributeName"]
    assert clients["s3"].head_bucket(Bucket=settings.artifact_bucket)


def test_a_change_in_the_stack_reaches_the_test_resources(
    template: dict[str, Any], clients: dict[str, Any]
) -> None:
    """GIVEN the stack's task queue with high-throughput FIFO and 7 receives (as -c would make it)
    THEN the provisioned copy has them: nothing here restates the stack."""
    changed = copy.deepcopy(template)
    props = changed["Resources"]["TaskQueue"]["Properties"]
    props.update(DeduplicationScope="messageGroup", FifoThroughputLimit="perMessageGroupId")
    props["RedrivePolicy"]["maxReceiveCount"] = 7
    sqs = clients["sqs"]
    settings = provision(sqs, clients["dynamodb"], clients["s3"], template=changed)
    tasks = _attributes(sqs, settings.task_queue_url)
    assert (tasks["DeduplicationScope"], tasks["FifoThroughputLimit"]) == (
        "messageGroup",
        "perMessageGroupId",
    )
    assert json.loads(tasks["RedrivePolicy"])["maxReceiveCount"] in (7, "7")
    assert settings.max_receive_count == 7


def test_test_overrides_are_explicit_deviations(template: dict[str, Any], clients: dict[str, Any]) -> None:
    sqs = clients["sqs"]
    settings = provision(
        sqs, clients["dynamodb"], clients["s3"], template=template, max_receive_count=2, task_visibility_s=2
    )
    tasks = _attributes(sqs, settings.task_queue_url)
    assert tasks["VisibilityTimeout"] == "2"
    assert int(json.loads(tasks["RedrivePolicy"])["maxReceiveCount"]) == settings.max_receive_count == 2


def _broken_app(root: Path) -> None:
    (root / "cdk.json").write_text(json.dumps({"app": "python3 app.py", "context": {}}))
    (root / "app.py").write_text("raise SystemExit('stack mid-edit')\n")


def test_an_app_that_does_not_synthesize_is_named(tmp_path: Path) -> None:
    _broken_app(tmp_path)
    with pytest.raises(TemplateError, match="stack mid-edit"):
        stack_template(tmp_path)


def test_an_app_mid_edit_falls_back_to_the_last_template(tmp_path: Path) -> None:
    _broken_app(tmp_path)
    cache = tmp_path / ".shardq" / "template-cache"
    cache.mkdir(parents=True)
    (cache / "template-earlier.json").write_text(json.dumps({"Resources": {"X": {}}}))
    with pytest.warns(UserWarning, match="using the last synthesized template"):
        assert stack_template(tmp_path) == {"Resources": {"X": {}}}
