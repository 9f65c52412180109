"""Cost counted once with each outcome, and the spend guard (issue #25 item 5), on the local cloud.

GIVEN results that carry their seconds and their worker's price, WHEN they are recorded, THEN the
job's cost is the exact sum of its counted results' costs, whatever duplicates and late copies
arrive; a job with ``budget_usd`` stops sending, its queued tasks are dropped unrun by real
workers, its running tasks finish and count, and it ends FAILED saying so.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from shardq.core import spend
from shardq.core.advance import results_message
from shardq.core.contracts import ShardResult, ShardTask, TrainingRequest, ValidationError
from shardq.core.engine import Engine
from shardq.core.jobstore import JobNotFound, Outcome
from shardq.worker.runtime import Worker
from tests.helpers import TRUSTED, receive_all, result_for, tasks_of

# 72 USD/h for one second: 20,000 micro-USD (two cents) a task.
PRICE, SECONDS, TASK_COST = 72.0, 1.0, 20_000


def priced(task: ShardTask, **fields: Any) -> ShardResult:
    """A task's result, one second at ``PRICE``."""
    return dataclasses.replace(result_for(task), duration_s=SECONDS, price_per_hour=PRICE, **fields)


def take(engine: Engine, n: int) -> list[tuple[ShardTask, dict[str, Any]]]:
    """Receive ``n`` tasks as a worker that starts them would (they stay in flight)."""
    resp = engine.sqs.receive_message(
        QueueUrl=engine.settings.task_queue_url, MaxNumberOfMessages=n, VisibilityTimeout=300
    )
    return [(ShardTask.from_json(m["Body"]), m) for m in resp.get("Messages", [])]


def drain(engine: Engine) -> list[Any]:
    """The aggregator: every message on the results queue, parsed as it parses them, ingested."""
    items = [results_message(m["Body"]) for m in receive_all(engine.sqs, engine.settings.results_queue_url)]
    ingest(engine, items)
    return items


def ingest(engine: Engine, items: list[Any]) -> None:
    """What the aggregator does with a batch; nothing in it may fail."""
    assert not engine.ingest(items)


def worker(engine: Engine) -> Worker:
    return Worker(
        sqs=engine.sqs,
        s3=engine.s3,
        task_queue_url=engine.settings.task_queue_url,
        results_queue_url=engine.settings.results_queue_url,
        ddb=engine.ddb,
        job_table=engine.settings.job_table,
        allow=TRUSTED,
        wait_s=0,
        price_per_hour=PRICE,
    )


def counted_cost(engine: Engine, job_id: str) -> int:
    """The sum of the counted results' own costs (the model test's invariant, read here directly)."""
    return sum(row.result.cost_micro_usd for row in engine.store.results(job_id, 0))


def test_cost_is_counted_once_with_its_outcome_whatever_duplicates_and_late_copies_arrive(
    engine: Engine, make_request: Any
) -> None:
    engine.submit(make_request("map", job_id="cost", shards=3, max_parallel=3))
    tasks = tasks_of(receive_all(engine.sqs, engine.settings.task_queue_url))
    results = [priced(t) for t in tasks]
    # Two copies of the first result in one batch, the second one alone, then everything again.
    ingest(engine, [Outcome(results[0]), Outcome(results[0]), Outcome(results[1])])
    ingest(engine, [Outcome(r) for r in results[:2]])
    job = engine.store.get_job("cost")
    assert job.cost_micro_usd == 2 * TASK_COST == counted_cost(engine, "cost")
    assert job.counters[("usd", 0, "train")] == 2 * TASK_COST

    ingest(engine, [Outcome(results[2])])
    job = engine.store.get_job("cost")
    assert job.status == "SUCCEEDED"
    # Late and duplicate copies after the end (a redelivery, a second worker) change nothing.
    ingest(engine, [Outcome(r) for r in results] + [Outcome(dataclasses.replace(results[1], attempt=2))])
    job = engine.store.get_job("cost")
    assert job.cost_micro_usd == 3 * TASK_COST == counted_cost(engine, "cost")
    assert spend.cost_summary(job)["cost_usd"] == pytest.approx(0.06)


def test_a_spent_budget_drops_queued_tasks_lets_running_ones_finish_and_fails_the_job_saying_so(
    engine: Engine, make_request: Any
) -> None:
    # GIVEN a 6-shard job with a budget of 1.5 tasks, two of its tasks running
    engine.submit(make_request("map", job_id="capped", shards=6, max_parallel=6, budget_usd=0.03))
    (first, _), (second, _) = take(engine, 2)
    # WHEN the first one's cost (0.02) and then... nothing is spent yet below the budget
    ingest(engine, [Outcome(priced(first))])
    assert engine.store.get_job("capped").budget_stop is None
    # ...and the second one finishes: 0.04 ≥ 0.03, the budget is spent
    ingest(engine, [Outcome(priced(second))])
    job = engine.store.get_job("capped")
    assert job.budget_stop is not None and job.budget_stop["cost_uusd"] == 2 * TASK_COST
    assert job.status == "RUNNING"  # four tasks still queued (or running)
    (third, _) = take(engine, 1)[0]  # a worker had started this one just before the stop

    # THEN real workers drop the three queued tasks unrun and say so
    w = worker(engine)
    handled = sum(w.poll_once() for _ in range(3))
    assert handled == 3
    assert receive_all(engine.sqs, engine.settings.task_queue_url) == []
    notices = drain(engine)
    assert sorted(n.shard_id for n in notices if isinstance(n, spend.Dropped)) == sorted(
        {t for t in range(6)} - {first.shard_id, second.shard_id, third.shard_id}
    )
    job = engine.store.get_job("capped")
    assert job.status == "RUNNING" and spend.outstanding(job) == 1  # the running one

    # AND a redelivered notice counts once
    ingest(engine, [spend.Dropped.of("capped", 0, notices[0].shard_id, "train")])
    assert spend.dropped(engine.store.get_job("capped")) == 3

    # WHEN the running task finishes, it is counted, and the job ends
    ingest(engine, [Outcome(priced(third))])
    job = engine.store.get_job("capped")
    assert job.status == "FAILED"
    assert job.cost_micro_usd == 3 * TASK_COST == counted_cost(engine, "capped")
    assert job.error is not None and job.error.startswith(
        "budget_usd 0.03 spent: $0.04 when new tasks stopped, $0.06 after the 1 task running then "
        "finished; 3 queued tasks dropped unrun"
    )
    manifest = engine.manifest(job, job.status, job.error)
    assert manifest["error"] == job.error
    assert manifest["cost"]["cost_usd"] == pytest.approx(0.06)
    assert manifest["cost"]["budget_usd"] == 0.03


def test_a_round_that_spent_the_budget_completes_but_no_reduce_or_next_round_is_sent(
    engine: Engine, make_request: Any
) -> None:
    engine.submit(make_request("data_parallel", job_id="dp", shards=2, rounds=2, budget_usd=0.01))
    tasks = tasks_of(receive_all(engine.sqs, engine.settings.task_queue_url))
    ingest(engine, [Outcome(priced(t)) for t in tasks])
    job = engine.store.get_job("dp")
    assert job.status == "FAILED" and job.error is not None
    assert job.error.startswith("budget_usd 0.01 spent: $0.04 when new tasks stopped, $0.04 after the 0")
    assert receive_all(engine.sqs, engine.settings.task_queue_url) == []  # no reduce was sent


def test_a_job_whose_last_task_spent_the_budget_succeeds_over_it(engine: Engine, make_request: Any) -> None:
    engine.submit(make_request("map", job_id="last", shards=2, max_parallel=2, budget_usd=0.03))
    tasks = tasks_of(receive_all(engine.sqs, engine.settings.task_queue_url))
    ingest(engine, [Outcome(priced(t)) for t in tasks])
    job = engine.store.get_job("last")
    assert job.status == "SUCCEEDED" and job.cost_micro_usd == 2 * TASK_COST
    assert job.view().cost_usd == pytest.approx(0.04) and job.view().budget_usd == 0.03


def test_unpriced_results_cost_nothing_and_say_so(engine: Engine, make_request: Any) -> None:
    engine.submit(make_request("map", job_id="free", shards=2, max_parallel=2, budget_usd=1))
    tasks = tasks_of(receive_all(engine.sqs, engine.settings.task_queue_url))
    ingest(engine, [Outcome(result_for(t)) for t in tasks])
    job = engine.store.get_job("free")
    assert job.status == "SUCCEEDED" and job.cost_micro_usd == 0 and job.view().cost_usd == 0
    assert job.counters.get(("usd", 0, "train")) is None


@pytest.mark.parametrize("budget", [-5, 0, "5", True, float("inf"), 1e12])
def test_a_bad_budget_is_refused_naming_the_field_and_creates_nothing(
    engine: Engine, make_request: Any, budget: Any
) -> None:
    with pytest.raises(ValidationError) as exc:
        TrainingRequest.from_dict(make_request("map", job_id="bad", budget_usd=budget))
    message = str(exc.value)
    assert (
        "budget_usd must be a positive number of USD no greater than 10,000,000 (e.g. 25 or 12.5); "
        f"got {budget!r}; set one in that range, or leave budget_usd out for no limit"
    ) in message
    assert "no limit up to" not in message
    answer = engine.answer(make_request("map", job_id="bad", budget_usd=budget))
    assert "budget_usd" in str(answer)
    with pytest.raises(JobNotFound):
        engine.store.get_job("bad")


@pytest.mark.parametrize("price", [-1, float("nan"), "3", 1e9])
def test_a_result_with_a_bad_price_is_rejected_naming_the_field(price: Any) -> None:
    body = ShardResult("j", 0, 0, "train", "succeeded", duration_s=1.0).to_dict()
    body["price_per_hour"] = price
    with pytest.raises(ValidationError, match="price_per_hour must be a number of USD"):
        ShardResult.from_json(body)


def test_the_price_travels_in_the_body_only_when_set() -> None:
    plain = ShardResult("j", 0, 0, "train", "succeeded", duration_s=1.0)
    assert "price_per_hour" not in plain.to_dict() and plain.cost_micro_usd == 0
    paid = dataclasses.replace(plain, duration_s=90.0, price_per_hour=55.04)
    assert ShardResult.from_json(paid.to_json()) == paid
    assert paid.cost_micro_usd == 1_376_000  # 55.04 $/h for 90 s = $1.376


def test_a_tenant_over_its_monthly_budget_stops_its_running_jobs_and_cannot_submit(
    settings: Any, clients: dict[str, Any], make_request: Any
) -> None:
    # GIVEN a tenant with a monthly budget of 0.03 USD (cdk.json scheduling)
    tenancy = {"tenants": {"vision": {"weight": 1, "monthly_budget_usd": 0.03}, "default": {"weight": 1}}}
    engine = Engine(
        settings=dataclasses.replace(settings, scheduling=json.dumps(tenancy)),
        ddb=clients["dynamodb"],
        sqs=clients["sqs"],
        s3=clients["s3"],
        events=clients["events"],
    )
    engine.submit(make_request("map", job_id="v1", shards=4, max_parallel=4, tenant="vision"))
    tasks = tasks_of(receive_all(engine.sqs, engine.settings.task_queue_url))
    # WHEN two of its tasks cost 0.04 together
    ingest(engine, [Outcome(priced(t)) for t in tasks[:2]])
    assert engine.store.tenant_month_cost("vision") == 2 * TASK_COST
    job = engine.store.get_job("v1")
    # THEN its running job stops taking tasks, for its tenant's budget
    assert job.budget_stop is not None and job.budget_stop["tenant"] == "vision"
    # AND a new submit is refused, naming the budget, with nothing created
    answer = engine.answer(make_request("map", job_id="v2", shards=2, tenant="vision"))
    assert "monthly_budget_usd of tenant 'vision' is 0.03: $0.04 spent" in json.dumps(answer)
    with pytest.raises(JobNotFound):
        engine.store.get_job("v2")
    # AND the other tenant is not affected
    assert engine.answer(make_request("map", job_id="d1", shards=1))["status"] == "RUNNING"
    # WHEN the job's last two tasks (running at the stop) finish, the job ends saying whose budget
    ingest(engine, [Outcome(priced(t)) for t in tasks[2:]])
    job = engine.store.get_job("v1")
    assert job.status == "SUCCEEDED"  # every task had been sent and ran: nothing was cut short
    assert engine.store.tenant_month_cost("vision") == 4 * TASK_COST == job.cost_micro_usd
