"""A map job of 1,000,000 shards (the request's cap) on the local cloud: accepted, fanned out by
continuations, its items as small as a 10-shard job's, its shard keys in order to the last one.

Running it to the end takes hours on the local cloud (BENCHMARKS.md section 10 runs 100,000);
what is checked here is everything that could grow with the shard count before a single result:
the request, the job record, the continuation, the close plan, the result keys, and a cancel
through its 100 close ranges.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from shardq.core.advance import CLOSE_RANGE_SHARDS, close_ranges, foreign_outcome
from shardq.core.contracts import MAX_SHARDS
from shardq.core.engine import Engine, EnqueueIncomplete
from shardq.core.jobstore import Outcome
from shardq.core.operations import cancel
from shardq.core.settings import Settings
from tests.core.test_manifest_parts import read_manifest
from tests.helpers import count_messages, result_for
from tests.requests import make_request

MILLION = 1_000_000


def job_items(clients: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """Every item of this test's table, as DynamoDB returns them."""
    return clients["dynamodb"].scan(TableName=settings.job_table, ConsistentRead=True)["Items"]


def test_a_million_shard_map_job_starts_with_the_items_of_a_small_one(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    assert MAX_SHARDS == MILLION
    # GIVEN a 10-shard map job, for the sizes to compare with
    engine.submit(make_request("map", job_id="small", shards=10))
    small = max(len(json.dumps(i)) for i in job_items(clients, settings))
    # WHEN a map job of a million shards is submitted by an invocation about to time out
    with pytest.raises(EnqueueIncomplete) as info:
        engine.submit(make_request("map", job_id="million", shards=MILLION), deadline=engine.clock() + 1)
    # THEN it is created and hands the rest of its fan-out on after its first chunk (a continuation
    # event carries only the job id)
    assert info.value.done == 500 and info.value.total == MILLION
    job = engine.store.get_job("million")
    assert job.status == "RUNNING" and job.task_count == MILLION
    assert job.enqueued(0, "train") == 500
    assert count_messages(clients["sqs"], settings.task_queue_url) == 10 + 500
    # AND the table holds one item per job, the big one no bigger than the small one's but for the
    # digits of its counts (nothing per shard)
    items = job_items(clients, settings)
    assert len(items) == 2
    big = max(len(json.dumps(i)) for i in items)
    assert big <= small + 32 < 2_000, (small, big)
    # AND its round will close in 100 ranges of 10,000 shards, one asynchronous invocation each
    assert close_ranges(job.kind, job.task_count) == MILLION // CLOSE_RANGE_SHARDS == 100


def test_result_keys_of_a_million_shards_sort_to_the_last_one(engine: Engine) -> None:
    # GIVEN a million-shard map job whose first, middle and last shards reported
    with pytest.raises(EnqueueIncomplete):
        engine.submit(make_request("map", job_id="keys", shards=MILLION), deadline=engine.clock() + 1)
    job = engine.store.get_job("keys")
    shards = [999_999, 0, 990_000, 500_000, 999_998]
    outcomes = [Outcome(result_for(engine.enqueuer.plan(job, 0, "train", s, None))) for s in shards]
    assert len(engine.advancer.record(outcomes).recorded) == len(shards)
    # THEN the store reads them in shard order, and the last close range's key range holds
    # exactly its own shards
    read = [r.result.shard_id for r in engine.store.iter_results("keys", 0, "train")]
    assert read == sorted(shards)
    last = [
        r.result.shard_id for r in engine.store.iter_results("keys", 0, "train", shards=(990_000, 999_999))
    ]
    assert last == [990_000, 999_998, 999_999]
    # AND a result past the last shard is no task of the job
    beyond = result_for(engine.enqueuer.plan(job, 0, "train", 999_999, None))
    outsider = Outcome(result=replace(beyond, shard_id=MILLION))
    assert foreign_outcome((MILLION, 1, "map"), "keys", outsider) == (
        "shard_id 1000000 does not exist: job keys has 1000000 tasks per round"
    )
    # AND an operator's cancel closes it through its 100 ranges (here one after another, on the
    # AWS stack one splitter invocation each): CANCELLED, its manifest listing the five outcomes
    report = cancel(engine, "keys")
    assert report.cancelled and report.status == "CANCELLED"
    assert len(engine.store.close_parts("keys", 0)) == 100
    manifest = read_manifest(engine.s3, engine.settings, "keys")
    assert (manifest["status"], manifest["outputs_count"]) == ("CANCELLED", len(shards))
    assert [o["shard_id"] for o in manifest["outputs"]] == sorted(shards)
