"""Every job-table item within DynamoDB's 400 KB at the documented limits, against the local cloud
(which refuses a bigger item as DynamoDB does); batch writes DynamoDB holds back are sent again,
then refused with an error after their attempts.

The map job's million shards are checked in ``test_million_shards.py`` (nothing on the job grows
with its shard count); here: a successive-halving sweep of ``MAX_GATHERED_TASKS`` trials at η = 2,
its rung plan at S3's longest keys, and the job record of ``MAX_ROUNDS`` rounds of
``MAX_GATHERED_TASKS`` shards with a request of ``MAX_REQUEST_BYTES``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest

from shardq.core import planning
from shardq.core.contracts import MAX_GATHERED_TASKS, MAX_REQUEST_BYTES, MAX_ROUNDS, TrainingRequest
from shardq.core.engine import Engine, EnqueueIncomplete, request_hash
from shardq.core.jobstore import JobRecord, JobStore, JobStoreError, Outcome
from shardq.core.rungplan import PART_BYTES
from shardq.core.settings import Settings
from tests.helpers import CountingClient, count_messages, result_for
from tests.requests import make_request

# DynamoDB's item limit: 400 KB (of names and values), enforced by the local cloud too.
ITEM_LIMIT = 400 * 1024


def plan_items(clients: dict[str, Any], settings: Settings, job_id: str) -> list[dict[str, Any]]:
    """The stored parts of a job's rung plans."""
    return clients["dynamodb"].query(
        TableName=settings.job_table,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :p)",
        ExpressionAttributeValues={":pk": {"S": f"JOB#{job_id}"}, ":p": {"S": "PLAN#"}},
        ConsistentRead=True,
    )["Items"]


def test_halving_10000_trials_eta2_within_item_limit(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a random-search sweep of 10,000 trials (the cap) halved at eta 2 over budgets 1, 2, 4,
    # submitted by a splitter about to time out (its first 500 tasks sent: the queue's volume is
    # not what is under test, and the local cloud sends ≈ 250 tasks/s on a busy machine)
    request = make_request(
        "sweep",
        job_id="halve",
        search_space={"lr": {"log_uniform": [1e-4, 1e-1]}},
        search={"method": "random", "num_trials": MAX_GATHERED_TASKS},
        early_stopping={"eta": 2, "min_budget": 1, "max_budget": 4},
    )
    with pytest.raises(EnqueueIncomplete):
        engine.submit(request, deadline=engine.clock() + 1)
    job = engine.store.get_job("halve")
    assert (job.task_count, job.rounds) == (MAX_GATHERED_TASKS, 3)
    # WHEN every trial of rung 0 has reported (trial i's loss grows with i) and the rung closes
    layout = planning.Layout(settings.artifact_bucket, "halve")
    tasks = [planning.train_task(job.request, "halve", layout, 0, i, None) for i in range(job.task_count)]
    engine.record([Outcome(result_for(t, loss=float(t.shard_id))) for t in tasks])
    with pytest.raises(EnqueueIncomplete):
        engine.advance("halve", deadline=engine.clock() + 1)
    # THEN rung 1 is planned: the best half, 5,000 trials, each from its own rung-0 model, stored in
    # parts the local cloud accepted (one item would hold ≈ 620 KiB)
    job = engine.store.get_job("halve")
    assert job.expected(1, "train") == MAX_GATHERED_TASKS // 2
    plan = engine.store.round_plan("halve", 1)
    assert plan == [(i, layout.shard_output(0, i) + "model.npz") for i in range(MAX_GATHERED_TASKS // 2)]
    assert len(json.dumps(plan)) > ITEM_LIMIT
    parts = plan_items(clients, settings, "halve")
    assert len(parts) >= 2 and all(len(p["plan"]["S"]) <= PART_BYTES for p in parts)
    # AND its tasks go out from that plan, from the cursor (the first chunk sent; a continuation
    # sends the rest)
    assert job.enqueued(1, "train") == 500
    assert count_messages(clients["sqs"], settings.task_queue_url) == 500 + 500


def test_rung_plan_with_longest_s3_uris_stored_in_parts(engine: Engine) -> None:
    # GIVEN a 10,000-trial sweep at rung 0, and a plan of 5,000 trials whose models have S3's
    # longest keys (1,024 bytes): ≈ 5.2 MB of plan
    engine.submit(make_request("sweep", job_id="long", early_stopping={"eta": 3, "max_budget": 9}))
    job = engine.store.get_job("long")
    plan = [(i, f"s3://{'b' * 63}/{str(i).rjust(1024, 'k')}") for i in range(MAX_GATHERED_TASKS // 2)]
    # WHEN it is stored as rung 1's plan
    engine.store.put_round_plan(job, 1, plan)
    # THEN it reads back whole, and the job counts it
    assert engine.store.round_plan("long", 1) == plan
    assert engine.store.get_job("long").expected(1, "train") == len(plan)


class HoldingBack(CountingClient):
    """DynamoDB answering a BatchWriteItem with its last write unprocessed ``times`` times (as it
    does when throttled), the other writes applied for real."""

    def __init__(self, real: Any, times: int) -> None:
        super().__init__(real)
        self.times = times

    def batch_write_item(self, *, RequestItems: dict[str, Any]) -> Any:
        self.counts["batch_write_item"] = self.counts.get("batch_write_item", 0) + 1
        ((table, writes),) = RequestItems.items()
        if self.times <= 0:
            return self.real.batch_write_item(RequestItems=RequestItems)
        self.times -= 1
        *done, held = writes
        if done:
            self.real.batch_write_item(RequestItems={table: done})
        return {"UnprocessedItems": {table: [held]}}


def test_batch_write_unprocessed_items_retried_then_error(
    engine: Engine, settings: Settings, clients: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shardq.core.batchcalls.time.sleep", lambda s: None)
    # GIVEN a sweep at rung 0 and a rung plan of three parts
    engine.submit(make_request("sweep", job_id="held", early_stopping={"eta": 3, "max_budget": 9}))
    job = engine.store.get_job("held")
    plan = [(i, f"s3://b/{str(i).rjust(1024, 'k')}") for i in range(700)]
    # WHEN DynamoDB holds a write back twice
    flaky = HoldingBack(clients["dynamodb"], times=2)
    JobStore(settings.job_table, flaky).put_round_plan(job, 1, plan)
    # THEN it is sent again until written: the whole plan, in 3 calls
    assert engine.store.round_plan("held", 1) == plan and flaky.counts["batch_write_item"] == 3
    # AND a delete held back for good is an error naming what is left after the attempts, not a spin
    always = HoldingBack(clients["dynamodb"], times=99)
    keys = [{"pk": p["pk"], "sk": p["sk"]} for p in plan_items(clients, settings, "held")]
    with pytest.raises(JobStoreError, match="1 writes still unprocessed after 8 BatchWriteItem calls"):
        JobStore(settings.job_table, always)._delete(keys)
    assert always.counts["batch_write_item"] == 8


def test_job_record_of_the_longest_job_with_the_largest_request_within_item_limit(
    engine: Engine,
) -> None:
    # GIVEN a data-parallel request of 1,000 rounds of 10,000 shards padded to the request's byte cap
    payload = make_request(job_id="huge", shards=MAX_GATHERED_TASKS, rounds=MAX_ROUNDS)
    size = len(TrainingRequest.from_dict(payload).to_json().encode())
    payload["hyperparameters"] = {"notes": "x" * (MAX_REQUEST_BYTES - size - 32)}
    request = TrainingRequest.from_dict(payload)
    assert MAX_REQUEST_BYTES - 64 < len(request.to_json().encode()) <= MAX_REQUEST_BYTES
    # ... run to its last round: every round's counters (ok, fail and enqueued, of its training and
    # its reduce) at their largest, a failure's error and a long model URI on the record
    counters = {
        (kind, r, phase): MAX_GATHERED_TASKS if phase == "train" else 1
        for r in range(MAX_ROUNDS)
        for phase in ("train", "reduce")
        for kind in ("ok", "fail", "enq")
    }
    record = replace(
        JobRecord.new(request, "job-20260131-120000-1a2b3c4d", request_hash(request)),
        round=MAX_ROUNDS - 1,
        counters=MappingProxyType(counters),
        model_uri=f"s3://{'b' * 63}/{'k' * 1024}",
        error="e" * 600,
        failed_total=MAX_GATHERED_TASKS,
    )
    # WHEN the store writes it, THEN the local cloud (400 KB per item, as DynamoDB) takes it whole
    _, created = engine.store.create_job(record)
    assert created
    assert engine.store.get_job(record.job_id).counters == counters
