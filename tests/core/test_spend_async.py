"""The spend guard on jobs whose tasks span rounds (issue #27 item 1 with #25 item 5), on the local cloud.

GIVEN an ASHA sweep (tasks of several rungs in flight at once) or a FedBuff job (clients' updates
span model versions) whose ``budget_usd`` is spent, WHEN real workers drop the queued tasks and a
task of another rung or update number is still running, THEN the job keeps RUNNING until that
task is counted, and only then ends FAILED saying what ran and what was dropped
(``shardq.core.outstanding``: one definition of the tasks out, for every kind of job).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from shardq.core import operations, spend
from shardq.core.contracts import ShardTask
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.outstanding import tasks_out
from shardq.core.store.spending import FORGOTTEN_COST_ATTRIBUTE
from tests.core.test_asha import asha_sweep, loss_of
from tests.core.test_fedbuff import fb
from tests.core.test_spend import PRICE, TASK_COST, drain, ingest, priced, worker
from tests.helpers import result_for


def in_flight(engine: Engine) -> list[tuple[ShardTask, dict[str, Any]]]:
    """Every queued task, received as workers that start them would (they stay in flight)."""
    out = []
    while True:
        resp = engine.sqs.receive_message(
            QueueUrl=engine.settings.task_queue_url, MaxNumberOfMessages=10, VisibilityTimeout=300
        )
        messages = resp.get("Messages", [])
        if not messages:
            return out
        out.extend((ShardTask.from_json(m["Body"]), m) for m in messages)


def run(engine: Engine, task: ShardTask, message: dict[str, Any]) -> None:
    """A worker finishes ``task`` (one priced second; a sweep's loss is ``loss_of``) and its
    message leaves the queue."""
    ingest(engine, [Outcome(priced(task, metrics={"loss": loss_of(task)}))])
    engine.sqs.delete_message(QueueUrl=engine.settings.task_queue_url, ReceiptHandle=message["ReceiptHandle"])


def requeue(engine: Engine, message: dict[str, Any]) -> None:
    """A task received but not started goes back on the queue (for a worker to drop)."""
    engine.sqs.change_message_visibility(
        QueueUrl=engine.settings.task_queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
    )


def key(task: ShardTask) -> tuple[int, int]:
    return (task.round, task.shard_id)


def test_a_budget_stopped_asha_sweep_waits_for_its_running_rung_1_task_then_fails_saying_so(
    engine: Engine,
) -> None:
    # GIVEN a 9-trial ASHA sweep (eta 3), 3 in flight, with a budget of 3.5 tasks
    engine.submit(asha_sweep("asha-cap", budget_usd=0.07))
    sent = dict((key(t), (t, m)) for t, m in in_flight(engine))
    assert sorted(sent) == [(0, 0), (0, 1), (0, 2)]
    # WHEN trials 0 and 1 finish (their slots draw trials 3 and 4), then trial 3 (rung 0 has 3
    # results: trial 0 is promoted to rung 1)
    for k in ((0, 0), (0, 1)):
        run(engine, *sent.pop(k))
    sent.update((key(t), (t, m)) for t, m in in_flight(engine))
    assert sorted(sent) == [(0, 2), (0, 3), (0, 4)]
    run(engine, *sent.pop((0, 3)))
    sent.update((key(t), (t, m)) for t, m in in_flight(engine))
    assert sorted(sent) == [(0, 2), (0, 4), (1, 0)]
    # ... and trial 2 finishes: 4 tasks cost 0.08 ≥ 0.07, the budget is spent
    run(engine, *sent.pop((0, 2)))
    job = engine.store.get_job("asha-cap")
    assert job.budget_stop is not None and job.budget_stop["cost_uusd"] == 4 * TASK_COST
    assert in_flight(engine) == []  # no new trial and no promotion went out
    # THEN a real worker drops trial 4 (queued), while trial 0's rung-1 task still runs
    requeue(engine, sent.pop((0, 4))[1])
    assert worker(engine).poll_once() == 1
    notices = drain(engine)
    assert [(n.round, n.shard_id) for n in notices if isinstance(n, spend.Dropped)] == [(0, 4)]
    job = engine.store.get_job("asha-cap")
    # Rung 0 is settled (5 sent: 4 counted, 1 dropped), but rung 1's task is out: the job runs on
    assert job.status == "RUNNING" and tasks_out(job) == 1 == spend.outstanding(job)
    # WHEN the rung-1 task finishes, it is counted and the sweep ends FAILED, saying so
    run(engine, *sent.pop((1, 0)))
    job = engine.store.get_job("asha-cap")
    assert job.status == "FAILED" and tasks_out(job) == 0
    assert job.cost_micro_usd == 5 * TASK_COST
    assert job.error is not None and job.error.startswith(
        "budget_usd 0.07 spent: $0.08 when new tasks stopped, $0.10 after the 1 task running then "
        "finished; 1 queued task dropped unrun"
    )
    assert not sent


def test_a_budget_stopped_fedbuff_job_waits_for_every_clients_update_then_fails_saying_so(
    engine: Engine,
) -> None:
    # GIVEN a FedBuff job of 3 clients (buffer 3, 2 versions) with a budget of 1.5 updates
    engine.submit({**fb("fb-cap", buffer_size=3), "budget_usd": 0.03})
    sent = dict((key(t), (t, m)) for t, m in in_flight(engine))
    assert sorted(sent) == [(0, 0), (0, 1), (0, 2)]
    # WHEN clients 0 and 1 send their first updates (each goes on to its next update at once)
    run(engine, *sent.pop((0, 0)))
    run(engine, *sent.pop((0, 1)))
    job = engine.store.get_job("fb-cap")
    assert job.budget_stop is not None and job.budget_stop["cost_uusd"] == 2 * TASK_COST
    # THEN 3 tasks are out: client 2's first update (round 0), clients 0 and 1's second (round 1)
    assert tasks_out(job) == 3
    sent.update((key(t), (t, m)) for t, m in in_flight(engine))
    assert sorted(sent) == [(0, 2), (1, 0), (1, 1)]
    # AND a real worker drops the two queued second updates, while client 2's first one runs
    requeue(engine, sent.pop((1, 0))[1])
    requeue(engine, sent.pop((1, 1))[1])
    w = worker(engine)
    assert sum(w.poll_once() for _ in range(2)) == 2
    drain(engine)
    job = engine.store.get_job("fb-cap")
    assert spend.dropped(job) == 2
    assert job.status == "RUNNING" and tasks_out(job) == 1
    # WHEN client 2's update arrives (it fills version 0's buffer), no task follows it, and the
    # job ends FAILED: no reduce went out for a budget that is spent
    run(engine, *sent.pop((0, 2)))
    job = engine.store.get_job("fb-cap")
    assert job.status == "FAILED" and tasks_out(job) == 0
    assert in_flight(engine) == []
    assert job.cost_micro_usd == 3 * TASK_COST
    assert job.error is not None and job.error.startswith(
        "budget_usd 0.03 spent: $0.04 when new tasks stopped, $0.06 after the 1 task running then "
        "finished; 2 queued tasks dropped unrun"
    )


def test_a_fedbuff_clients_next_task_is_counted_out_once_whatever_redeliveries(engine: Engine) -> None:
    # GIVEN a FedBuff job whose client 0 sent its first update (its next task went out)
    engine.submit(fb("fb-twice", buffer_size=3))
    sent = dict((key(t), (t, m)) for t, m in in_flight(engine))
    first, message = sent.pop((0, 0))
    run(engine, first, message)
    job = engine.store.get_job("fb-twice")
    assert job.counters[("usent", 1, "train")] == 1 and tasks_out(job) == 3
    # WHEN its result is redelivered, twice in one batch and once more
    outcome = Outcome(priced(first, metrics={"loss": loss_of(first)}))
    ingest(engine, [outcome, outcome])
    ingest(engine, [outcome])
    # THEN its client's next task is counted out once: 3 tasks out, one per client
    job = engine.store.get_job("fb-twice")
    assert job.counters[("usent", 1, "train")] == 1 and tasks_out(job) == 3


def forgotten_cost(engine: Engine, job_id: str) -> int:
    """The job record's ``forgotten_uusd``: retried failures' cost that no outcome item holds now."""
    item = engine.ddb.get_item(
        TableName=engine.settings.job_table,
        Key={"pk": {"S": f"JOB#{job_id}"}, "sk": {"S": "JOB"}},
        ConsistentRead=True,
    )["Item"]
    return int(item.get(FORGOTTEN_COST_ATTRIBUTE, {}).get("N", 0))


def test_a_retried_asha_failure_keeps_its_cost_and_says_how_much_no_outcome_holds(engine: Engine) -> None:
    # GIVEN an ASHA sweep with no failure budget whose trial 0 fails after one priced second
    engine.submit(asha_sweep("asha-retry-cost", max_failed_shards=0))
    sent = dict((key(t), (t, m)) for t, m in in_flight(engine))
    failed, message = sent.pop((0, 0))
    engine.sqs.delete_message(QueueUrl=engine.settings.task_queue_url, ReceiptHandle=message["ReceiptHandle"])
    ingest(
        engine,
        [
            Outcome(
                dataclasses.replace(result_for(failed, status="failed"), duration_s=1.0, price_per_hour=PRICE)
            )
        ],
    )
    assert engine.store.get_job("asha-retry-cost").status == "FAILED"
    # WHEN the operator retries it (its failed outcome is deleted: the trial runs again)
    operations.retry_failed(engine, "asha-retry-cost")
    # THEN the job keeps what the failure cost (the time was spent), and says that no outcome
    # item holds it now: cost = the counted outcome items' costs + the forgotten ones'
    job = engine.store.get_job("asha-retry-cost")
    counted = sum(row.result.cost_micro_usd for row in engine.store.all_results("asha-retry-cost"))
    assert (job.cost_micro_usd, counted, forgotten_cost(engine, "asha-retry-cost")) == (
        TASK_COST,
        0,
        TASK_COST,
    )
    # AND when the trial's new task succeeds, its cost counts on top of the forgotten one
    again = {key(t): (t, m) for t, m in in_flight(engine)}
    run(engine, *again.pop((0, 0)))
    job = engine.store.get_job("asha-retry-cost")
    counted = sum(row.result.cost_micro_usd for row in engine.store.all_results("asha-retry-cost"))
    assert (job.cost_micro_usd, counted) == (2 * TASK_COST, TASK_COST)
    assert job.cost_micro_usd == counted + forgotten_cost(engine, "asha-retry-cost")
    assert job.counters[("usd", 0, "train")] == 2 * TASK_COST


def test_a_fedbuff_reduce_running_at_the_stop_closes_its_version_then_the_job_fails(engine: Engine) -> None:
    # GIVEN a FedBuff job of 2 clients (buffer 2, 3 versions) with a budget of 2.5 updates, whose
    # version 0 buffer filled (its reduce is running) while client 0 trains its second update
    # (max_staleness 0: client 1's next task would certainly be late, so it waits for version 1)
    engine.submit({**fb("fb-red", clients=2, buffer_size=2, rounds=3, max_staleness=0), "budget_usd": 0.05})
    sent = {(t.task_type, *key(t)): (t, m) for t, m in in_flight(engine)}
    run(engine, *sent.pop(("train", 0, 0)))
    run(engine, *sent.pop(("train", 0, 1)))
    sent.update(((t.task_type, *key(t)), (t, m)) for t, m in in_flight(engine))
    assert sorted(sent) == [("reduce", 0, 0), ("train", 1, 0)]
    # WHEN client 0's second update spends the budget (0.06 ≥ 0.05)
    run(engine, *sent.pop(("train", 1, 0)))
    job = engine.store.get_job("fb-red")
    assert job.budget_stop is not None
    # THEN the reduce is still out: the job runs on
    assert job.status == "RUNNING" and tasks_out(job) == 1
    # WHEN the reduce comes back, version 1 is made, but no waiting client is sent anything, and
    # with nothing out the job ends FAILED, saying so
    run(engine, *sent.pop(("reduce", 0, 0)))
    job = engine.store.get_job("fb-red")
    assert job.status == "FAILED" and job.round == 1 and tasks_out(job) == 0
    assert in_flight(engine) == []
    assert job.error is not None and job.error.startswith(
        "budget_usd 0.05 spent: $0.06 when new tasks stopped, $0.08 after the 1 task running then "
        "finished; 0 queued tasks dropped unrun"
    )
