"""A round's critical path does not touch the bulk results source (issue #27).

The local cloud's event source mappings ignore ``MaximumBatchingWindowInSeconds``, so a timing
could never show the window. Instead the bulk results source is switched off (the deployed mapping
disabled: a window of forever), and a data_parallel job must still run every round to the end:
each round-closing result (the train results of a small round, every reduce result) took the fast
queue. A map job too big for the fast path then stays unfinished until the bulk source is back,
so the switch is real.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shardq.core.jobstore import JobStore
from shardq.core.result_routes import FAST_ROUTE_MAX_TASKS
from shardq.local.cloud import LocalCloud
from tests.e2e.conftest import wait_for_status

SYNTH = "synthetic://linear?dim=4&noise=0.05&seed=3"


def mapping_on(cloud: LocalCloud, stack: dict[str, str], url_output: str) -> dict[str, Any]:
    sqs, lam = cloud.client("sqs"), cloud.client("lambda")
    arn = sqs.get_queue_attributes(QueueUrl=stack[url_output], AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    (mapping,) = [
        m
        for m in lam.list_event_source_mappings(FunctionName=stack["AggregatorFunctionName"])[
            "EventSourceMappings"
        ]
        if m["EventSourceArn"] == arn
    ]
    return dict(mapping)


@pytest.fixture
def bulk_source_off(cloud: LocalCloud, stack: dict[str, str]) -> Iterator[str]:
    """The bulk results queue's event source mapping, disabled for the test and enabled after it."""
    lam = cloud.client("lambda")
    uuid = mapping_on(cloud, stack, "ResultsQueueUrl")["UUID"]
    lam.update_event_source_mapping(UUID=uuid, Enabled=False)
    try:
        yield uuid
    finally:
        lam.update_event_source_mapping(UUID=uuid, Enabled=True)


def invoke(cloud: LocalCloud, stack: dict[str, str], payload: dict[str, Any]) -> None:
    response = cloud.client("lambda").invoke(
        FunctionName=stack["SplitterFunctionName"], Payload=json.dumps(payload).encode()
    )
    assert "FunctionError" not in response, response["Payload"].read()


def test_the_deployed_fast_source_has_no_window(cloud: LocalCloud, stack: dict[str, str]) -> None:
    fast = mapping_on(cloud, stack, "FastResultsQueueUrl")
    assert fast["BatchSize"] == 10
    assert fast.get("MaximumBatchingWindowInSeconds", 0) == 0
    assert fast["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_rounds_close_with_the_bulk_source_switched_off(
    cloud: LocalCloud, stack: dict[str, str], workers: list[Any], bulk_source_off: str
) -> None:
    # GIVEN the bulk results source disabled, and a job too big for the fast path
    invoke(
        cloud,
        stack,
        {
            "job_id": "fast-off-map",
            "kind": "map",
            "dataset": {"uri": SYNTH, "num_samples": (FAST_ROUTE_MAX_TASKS + 1) * 4},
            "sharding": {"shard_count": FAST_ROUTE_MAX_TASKS + 1},
            "entrypoint": "examples.linear:evaluate",
        },
    )
    # WHEN a data_parallel job of 2 shards and 3 rounds runs
    invoke(
        cloud,
        stack,
        {
            "job_id": "fast-off-dp",
            "kind": "data_parallel",
            "dataset": {"uri": SYNTH, "num_samples": 400},
            "sharding": {"shard_count": 2},
            "rounds": 3,
            "hyperparameters": {"lr": 0.05, "epochs": 1},
            "entrypoint": "examples.linear:train",
        },
    )
    # THEN it succeeds: every train result and every reduce result reached the aggregator by the
    # fast queue (three train closes and three reduces)
    job = wait_for_status(cloud, stack, "fast-off-dp", timeout=180)
    assert job.status == "SUCCEEDED"
    # AND the big map job's results wait on the bulk queue, unrecorded, while its source is off: every
    # task it sent (its first window: nothing counted, so nothing tops it up) answered there
    store = JobStore(stack["JobTableName"], cloud.client("dynamodb"))
    deadline = time.monotonic() + 120
    sqs = cloud.client("sqs")
    while time.monotonic() < deadline:
        waiting = int(
            sqs.get_queue_attributes(
                QueueUrl=stack["ResultsQueueUrl"], AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]["ApproximateNumberOfMessages"]
        )
        sent = store.get_job("fast-off-map").enqueued(0, "train")
        if sent and waiting >= sent:
            break
        time.sleep(0.5)
    assert sent and waiting >= sent, (sent, waiting)
    big = store.get_job("fast-off-map")
    assert big.status == "RUNNING" and big.done(0, "train") == 0
    # WHEN the bulk source is back THEN the map job finishes through it
    cloud.client("lambda").update_event_source_mapping(UUID=bulk_source_off, Enabled=True)
    assert wait_for_status(cloud, stack, "fast-off-map", timeout=180).status == "SUCCEEDED"
