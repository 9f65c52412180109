"""Chaos for cost (issue #25): real ``shardq worker`` processes with a price, duplicated and late
results, a crashing aggregator; and the spend guard stopping a job while workers run it.

GIVEN workers started with ``--price-per-hour``, WHEN every result is delivered twice, an
aggregator invocation dies mid-batch and every result is replayed after the job ended, THEN the
job's cost is exactly the sum of its counted results' costs. And a job with ``budget_usd`` stops:
its queued tasks are dropped unrun, its running ones finish and count, and it ends FAILED saying
what it spent.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from shardq.core.contracts import ShardResult
from shardq.core.jobstore import JobRecord
from tests.chaos.conftest import Rig
from tests.chaos.harness import InjectedCrash, request, run_until, settle

pytestmark = pytest.mark.local_cloud

PRICE = 3600.0  # a dollar a second: every task costs something visible


def counted_cost(rig: Rig, job: JobRecord) -> int:
    return sum(row.result.cost_micro_usd for row in rig.engine.store.all_results(job.job_id))


def test_duplicated_crashed_and_late_results_never_count_cost_twice(rig: Callable[..., Rig]) -> None:
    r = rig(workers=2, worker_args=("--price-per-hour", str(PRICE)))
    rng = random.Random(25)
    bodies: list[str] = []

    def duplicate(msgs: list[dict[str, Any]]) -> None:
        # Every result delivered twice (SQS at-least-once): the first time a body is seen, it is
        # sent again.
        for m in msgs:
            if m["Body"] not in bodies:
                bodies.append(m["Body"])
                r.clients["sqs"].send_message(QueueUrl=r.settings.results_queue_url, MessageBody=m["Body"])

    aggregator = r.pump.aggregator

    def crashing(event: dict[str, Any], context: Any) -> dict[str, Any]:
        # One invocation in five dies after recording: its whole batch comes back, recorded again.
        response = aggregator(event, context)
        if rng.random() < 0.2:
            raise InjectedCrash("aggregator died after recording")
        return response

    r.pump.on_receive = duplicate
    r.pump.aggregator = crashing
    r.engine.submit(request("priced", shards=4, rounds=2))
    r.pool.start()
    job = run_until(r.engine, "priced", r.pump, pool=r.pool, timeout=120)
    assert job.status == "SUCCEEDED", job.error
    # Late: every result body again, twice, after the job ended.
    for body in bodies * 2:
        r.clients["sqs"].send_message(QueueUrl=r.settings.results_queue_url, MessageBody=body)
    settle(r.pump, pool=r.pool)
    job = r.engine.store.get_job("priced")
    assert job.cost_micro_usd > 0
    assert job.cost_micro_usd == counted_cost(r, job)
    manifest_cost = r.engine.manifest(job, job.status, job.error)["cost"]["cost_usd"]
    assert round(manifest_cost * 1e6) == job.cost_micro_usd
    # What was priced is what the worker measured: each counted result's seconds at the price.
    for row in r.engine.store.all_results("priced"):
        res: ShardResult = row.result
        assert res.price_per_hour == PRICE
        assert res.cost_micro_usd == round(res.duration_s * PRICE * 1e6 / 3600)


def test_a_budget_stops_a_job_that_real_workers_run(rig: Callable[..., Rig]) -> None:
    # GIVEN 2 workers at a dollar a second and 12 tasks of about half a second each
    r = rig(workers=2, worker_args=("--price-per-hour", str(PRICE)), task_visibility_s=30)
    budget = 2.0  # about four tasks' worth
    r.engine.submit(request("capped", shards=12, rounds=1, sleep=0.5, budget_usd=budget))
    r.pool.start()
    # WHEN it runs
    job = run_until(r.engine, "capped", r.pump, pool=r.pool, timeout=180)
    settle(r.pump, pool=r.pool)
    # THEN it stopped: FAILED, saying so; queued tasks dropped unrun, the running ones counted
    job = r.engine.store.get_job("capped")
    assert job.status == "FAILED" and job.error is not None
    assert job.error.startswith("budget_usd 2.00 spent: "), job.error
    stop = job.budget_stop
    assert stop is not None and stop["cost_uusd"] >= budget * 1e6
    rows = r.engine.store.all_results("capped")
    dropped = sum(v for (kind, _, _), v in job.counters.items() if kind == "drop")
    assert len(rows) + dropped == 12 and dropped > 0
    assert job.cost_micro_usd == counted_cost(r, job)
    # AND the overrun past the stop is at most what the two workers were running then
    after = len(rows) - int(stop["counted"])
    assert 0 <= after <= 2
    most = max(row.result.cost_micro_usd for row in rows)
    assert job.cost_micro_usd - int(stop["cost_uusd"]) <= after * most
    assert "queued task" in job.error and f"{dropped} queued task" in job.error
