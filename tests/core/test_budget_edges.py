"""Edge cases of the spend guard on FedBuff and ASHA jobs, on the local cloud (issue #27, helper B3).

The promises: every task sent is counted exactly once (an outcome, or a drop once the budget is
spent), so a budget-stopped job ends exactly when its last running task came back; a crash of the
aggregator at any point keeps that count right; a retry of a budget-stopped job is refused the same
way for every kind; an ASHA sweep ended early still shows its rungs in every view.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from shardq.core import operations
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.outstanding import tasks_out
from shardq.core.store.fedbuff import FedBuffStore
from tests.chaos.faults import FaultInjector
from tests.core.test_asha import asha_sweep, load_manifest, loss_of
from tests.core.test_fedbuff import fb
from tests.core.test_spend import TASK_COST, drain, priced, worker
from tests.core.test_spend_async import in_flight, key, requeue, run
from tests.requests import make_request

# Every write the aggregator makes to the job table: the ones a dead aggregator never makes.
TABLE_WRITES = ("TransactWriteItems", "UpdateItem", "PutItem", "DeleteItem", "BatchWriteItem")


@contextmanager
def dies(engine: Engine, *, after: str | None = None, at: str | None = None) -> Iterator[None]:
    """The aggregator dies right ``after`` its first SQS call ``after`` succeeded, or ``at`` its first
    SQS call ``at`` (that call fails): from then on no table write of it reaches the table. The
    chaos harness's fault injector (``tests.chaos.faults``), on the engine's real clients."""
    table = FaultInjector(operations=())
    table.attach(engine.ddb)
    queue = FaultInjector(operations=(), fatal={at: "AccessDenied"} if at else {})

    def arm(**_: Any) -> None:
        table.fatal = {op: "AccessDenied" for op in TABLE_WRITES}

    hooks: list[tuple[str, Any]] = [(f"after-call.sqs.{after}", arm)] if after else []
    if at:
        hooks += [(f"before-send.sqs.{at}", arm), (f"before-send.sqs.{at}", queue.before_send)]
    for name, hook in hooks:
        engine.sqs.meta.events.register(name, hook)
    try:
        yield
    finally:
        for name, hook in hooks:
            engine.sqs.meta.events.unregister(name, hook)
        engine.ddb.meta.events.unregister("before-send", table.before_send)


def outcome(task: Any) -> Outcome:
    return Outcome(priced(task, metrics={"loss": loss_of(task)}))


def delete(engine: Engine, message: dict[str, Any]) -> None:
    engine.sqs.delete_message(QueueUrl=engine.settings.task_queue_url, ReceiptHandle=message["ReceiptHandle"])


def copy_on_queue(engine: Engine, message: dict[str, Any], dedup: str) -> None:
    """A second copy of a task's message (one sent again past SQS's 5-minute deduplication window)."""
    engine.sqs.send_message(
        QueueUrl=engine.settings.task_queue_url,
        MessageBody=message["Body"],
        MessageGroupId="copies",
        MessageDeduplicationId=dedup,
    )


def drop_all_queued(engine: Engine) -> None:
    """A real worker drops every queued task of a stopped job; the aggregator counts the notices."""
    w = worker(engine)
    while w.poll_once():
        pass
    drain(engine)


# -- 1: a drop notice for a copy of a FedBuff update already recorded -----------------------------


def test_a_dropped_copy_of_a_recorded_fedbuff_update_is_not_counted_again(engine: Engine) -> None:
    # GIVEN a FedBuff job of 3 clients (buffer 3) with a budget of 1.5 updates, whose client 0 sent
    # updates 0 and 1 (the second spent the budget: client 0's update 2 went out before the stop)
    engine.submit({**fb("fb-dup-drop", buffer_size=3), "budget_usd": 0.03})
    sent = {key(t): (t, m) for t, m in in_flight(engine)}
    run(engine, *sent.pop((0, 0)))
    sent.update((key(t), (t, m)) for t, m in in_flight(engine))
    second, message = sent.pop((1, 0))
    run(engine, second, message)
    job = engine.store.get_job("fb-dup-drop")
    assert job.budget_stop is not None
    sent.update((key(t), (t, m)) for t, m in in_flight(engine))
    assert sorted(sent) == [(0, 1), (0, 2), (2, 0)] and tasks_out(job) == 3
    # WHEN a copy of update 1's task (sent again past the deduplication window) is dropped by a
    # real worker, and its notice reaches the aggregator
    copy_on_queue(engine, message, "late-copy")
    drop_all_queued(engine)
    # THEN it is not counted: that update's outcome is recorded, so its task is not out twice
    job = engine.store.get_job("fb-dup-drop")
    assert tasks_out(job) == 3 and job.counters.get(("drop", 1, "train"), 0) == 0
    # AND the job ends only once every task it sent came back: update 2 dropped, updates 0 of
    # clients 1 and 2 counted
    requeue(engine, sent.pop((2, 0))[1])
    drop_all_queued(engine)
    run(engine, *sent.pop((0, 1)))
    job = engine.store.get_job("fb-dup-drop")
    assert job.status == "RUNNING" and tasks_out(job) == 1
    run(engine, *sent.pop((0, 2)))
    job = engine.store.get_job("fb-dup-drop")
    assert job.status == "FAILED" and tasks_out(job) == 0 and job.cost_micro_usd == 4 * TASK_COST
    assert job.error is not None and "2 tasks running then finished; 1 queued task dropped" in job.error


# -- 2: a crash between sending a client's next task and counting it ------------------------------


def test_a_crash_right_after_a_fedbuff_next_task_is_sent_still_counts_it_out(engine: Engine) -> None:
    # GIVEN a FedBuff job of 3 clients (buffer 3) with a budget of 1.5 updates
    engine.submit({**fb("fb-crash-sent", buffer_size=3), "budget_usd": 0.03})
    sent = {key(t): (t, m) for t, m in in_flight(engine)}
    first, message = sent.pop((0, 0))
    # WHEN client 0's first update arrives and the aggregator dies right after sending its next task
    with dies(engine, after="SendMessageBatch"):
        assert engine.ingest([outcome(first)]), "the batch fails: its result is redelivered"
    delete(engine, message)
    # THEN that task counts as out already (3 out: clients 1 and 2's first updates, client 0's second)
    job = engine.store.get_job("fb-crash-sent")
    assert tasks_out(job) == 3
    sent.update((key(t), (t, m)) for t, m in in_flight(engine))
    assert sorted(sent) == [(0, 1), (0, 2), (1, 0)]
    # WHEN client 1's update spends the budget, its next task is dropped, client 2's update arrives
    run(engine, *sent.pop((0, 1)))
    assert engine.store.get_job("fb-crash-sent").budget_stop is not None
    sent.update((key(t), (t, m)) for t, m in in_flight(engine))
    requeue(engine, sent.pop((1, 1))[1])
    drop_all_queued(engine)
    run(engine, *sent.pop((0, 2)))
    # THEN the job runs on: client 0's second update still trains
    job = engine.store.get_job("fb-crash-sent")
    assert job.status == "RUNNING" and tasks_out(job) == 1
    # WHEN the crashed batch is redelivered (its task is sent again: SQS drops the copy), then the
    # update arrives
    assert not engine.ingest([outcome(first)])
    assert in_flight(engine) == []
    assert tasks_out(engine.store.get_job("fb-crash-sent")) == 1
    run(engine, *sent.pop((1, 0)))
    # THEN it is counted, with its cost, and the job ends FAILED saying so
    job = engine.store.get_job("fb-crash-sent")
    assert job.status == "FAILED" and tasks_out(job) == 0 and job.cost_micro_usd == 4 * TASK_COST
    assert job.error is not None and "2 tasks running then finished; 1 queued task dropped" in job.error
    assert FedBuffStore(engine.store).updates("fb-crash-sent", [(0, 0)])[(0, 0)].next_sent


def test_a_crash_at_the_send_of_a_fedbuff_next_task_sends_it_on_redelivery_even_once_stopped(
    engine: Engine,
) -> None:
    # GIVEN a FedBuff job of 3 clients (buffer 3) with a budget of 1.5 updates, whose aggregator
    # dies sending client 0's next task (nothing reaches the queue)
    engine.submit({**fb("fb-crash-send", buffer_size=3), "budget_usd": 0.03})
    sent = {key(t): (t, m) for t, m in in_flight(engine)}
    first, message = sent.pop((0, 0))
    with dies(engine, at="SendMessageBatch"):
        assert engine.ingest([outcome(first)])
    delete(engine, message)
    assert in_flight(engine) == []
    # WHEN client 1's update spends the budget and the first updates of clients 1 and 2 are in
    run(engine, *sent.pop((0, 1)))
    sent.update((key(t), (t, m)) for t, m in in_flight(engine))
    requeue(engine, sent.pop((1, 1))[1])
    drop_all_queued(engine)
    run(engine, *sent.pop((0, 2)))
    job = engine.store.get_job("fb-crash-send")
    assert job.budget_stop is not None
    # THEN the job waits for client 0's second update (it may be out, for all the table knows), and
    # the redelivered batch sends it (spent budget or not): a worker drops it, and the job ends
    assert job.status == "RUNNING"
    assert not engine.ingest([outcome(first)])
    drop_all_queued(engine)
    job = engine.store.get_job("fb-crash-send")
    assert job.status == "FAILED" and tasks_out(job) == 0
    assert job.counters.get(("drop", 1, "train")) == 2  # clients 0 and 1's second updates
    assert job.error is not None and "2 queued tasks dropped unrun" in job.error


def test_a_crash_between_making_a_version_and_sending_its_waiting_clients_is_repaired(
    engine: Engine,
) -> None:
    # GIVEN a FedBuff job of 2 clients (buffer 2, 3 versions, no staleness allowed) whose version 0
    # buffer filled: its reduce runs, and client 1 waits for version 1 (an update trained from
    # version 0 now would certainly be late) to train its second update
    engine.submit(fb("fb-waiters", clients=2, buffer_size=2, rounds=3, max_staleness=0))
    sent = {(t.task_type, *key(t)): (t, m) for t, m in in_flight(engine)}
    run(engine, *sent.pop(("train", 0, 0)))
    run(engine, *sent.pop(("train", 0, 1)))
    sent.update(((t.task_type, *key(t)), (t, m)) for t, m in in_flight(engine))
    assert sorted(sent) == [("reduce", 0, 0), ("train", 1, 0)]
    assert FedBuffStore(engine.store).counts("fb-waiters").waiting == {"1:0"}
    # WHEN the reduce's result makes version 1 and the aggregator dies sending client 1's task
    reduce, message = sent.pop(("reduce", 0, 0))
    with dies(engine, at="SendMessageBatch"):
        assert engine.ingest([outcome(reduce)])
    delete(engine, message)
    job = engine.store.get_job("fb-waiters")
    assert job.round == 1 and in_flight(engine) == []
    # THEN the redelivered result sends it, from version 1, counted out once
    assert not engine.ingest([outcome(reduce)])
    again = {(t.task_type, *key(t)): t for t, _ in in_flight(engine)}
    assert sorted(again) == [("train", 1, 1)]
    assert again[("train", 1, 1)].init_model_uri == engine.store.get_job("fb-waiters").model_uri
    job = engine.store.get_job("fb-waiters")
    assert job.counters[("usent", 1, "train")] == 2 and tasks_out(job) == 2
    assert FedBuffStore(engine.store).counts("fb-waiters").waiting == frozenset()


# -- 3: a retry of a budget-stopped job, every kind ---------------------------------------------


def _stopped(engine: Engine, job_id: str) -> None:
    """Run the job's first task (it spends the budget), then let workers drop what is queued and
    the running tasks finish until the job ends."""
    tasks = in_flight(engine)
    run(engine, *tasks[0])
    for _ in range(10):
        for _task, message in tasks[1:]:
            requeue(engine, message)
        drop_all_queued(engine)
        if engine.store.get_job(job_id).terminal:
            return
        tasks = in_flight(engine)
        for task, message in tasks:
            run(engine, task, message)
        tasks = []
        if engine.store.get_job(job_id).terminal:
            return
    raise AssertionError(f"job {job_id} never ended")


REQUESTS = {
    "data_parallel": lambda job_id: make_request(job_id=job_id, shards=3, rounds=2),
    "sweep": lambda job_id: make_request("sweep", job_id=job_id, search_space={"lr": [0.1, 0.2, 0.3]}),
    "asha": asha_sweep,
    "fedbuff": lambda job_id: fb(job_id, buffer_size=3),
}


@pytest.mark.parametrize("kind", sorted(REQUESTS))
def test_a_retry_of_a_budget_stopped_job_is_refused_naming_the_budget_and_changes_nothing(
    engine: Engine, kind: str
) -> None:
    # GIVEN a job of each kind stopped by its budget (one task's cost) and ended FAILED
    job_id = f"stopped-{kind.replace('_', '-')}"
    engine.submit({**REQUESTS[kind](job_id), "budget_usd": 0.01})
    _stopped(engine, job_id)
    before = engine.store.get_job(job_id)
    assert before.status == "FAILED" and before.budget_stop is not None
    # WHEN it is retried: THEN the retry is refused, saying why and what to do, and nothing moves
    with pytest.raises(operations.OperationError) as err:
        operations.retry_failed(engine, job_id)
    assert "budget_usd 0.01" in str(err.value) and "new job_id" in str(err.value)
    after = engine.store.get_job(job_id)
    assert (after.status, after.counters, after.cost_micro_usd) == (
        "FAILED",
        before.counters,
        before.cost_micro_usd,
    )
    assert in_flight(engine) == []


# -- 4: an ASHA sweep ended early keeps its rung history -----------------------------------------


@pytest.mark.parametrize("how", ["budget", "cancel"])
def test_an_asha_sweep_ended_early_summarizes_its_rungs_for_every_view(
    engine: Engine, clients: dict[str, Any], how: str
) -> None:
    # GIVEN a 9-trial ASHA sweep (eta 3) that promoted trial 0 to rung 1
    job_id = f"asha-early-{how}"
    engine.submit(asha_sweep(job_id, **({"budget_usd": 0.07} if how == "budget" else {})))
    sent = {key(t): (t, m) for t, m in in_flight(engine)}
    for k in ((0, 0), (0, 1)):
        run(engine, *sent.pop(k))
    sent.update((key(t), (t, m)) for t, m in in_flight(engine))
    run(engine, *sent.pop((0, 3)))
    sent.update((key(t), (t, m)) for t, m in in_flight(engine))
    assert (1, 0) in sent
    # WHEN it ends early: its budget spent (its running tasks finish, the queued one is dropped),
    # or cancelled by an operator
    if how == "budget":
        run(engine, *sent.pop((0, 2)))
        requeue(engine, sent.pop((0, 4))[1])
        drop_all_queued(engine)
        run(engine, *sent.pop((1, 0)))
    else:  # with two trials of rung 0 still running
        run(engine, *sent.pop((1, 0)))
        operations.cancel(engine, job_id)
    job = engine.store.get_job(job_id)
    assert job.status == ("FAILED" if how == "budget" else "CANCELLED"), job.error
    # THEN each rung that ran has its summary (what `result` and the dashboard read), as a sweep
    # that ran to its end has
    summaries = {s["round"]: s for s in engine.store.round_summaries(job_id)}
    assert sorted(summaries) == [0, 1]
    assert summaries[1]["shards_succeeded"] == 1 == job.done(1, "train")
    assert summaries[0]["shards_succeeded"] == job.done(0, "train") == (4 if how == "budget" else 3)
    manifest = load_manifest(clients, job.result_uri)
    assert [r["round"] for r in manifest["rounds"]] == [0, 1]
