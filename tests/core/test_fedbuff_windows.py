"""FedBuff with fewer client slots (``max_parallel``) than clients, under task windows and without: at
most ``max_parallel`` client tasks out, every freed slot handed once to the client that waited
longest (never trained first, in shard order, then the oldest last update), so with rounds × K ≥
clients every client trains; duplicates, failures, retry and cancel keep the count. On the local
cloud, with real workers where the queue depth is checked.

Found in review: the window held back only the clients' first tasks, after which each client whose
update came back got its next task at once, so a job ran up to one task per client whatever its
``max_parallel``, and could end before its fan-out reached every client (32 clients, 4 lanes, K 4,
3 versions: 14 clients got a first task, the 12 updates applied came from 9 of them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from shardq.core import spend
from shardq.core.engine import Engine
from shardq.core.fedbuff import Driver
from shardq.core.jobstore import JobRecord, Outcome
from shardq.core.operations import cancel, retry_failed
from shardq.core.outstanding import tasks_out
from shardq.core.planning import Layout, train_task
from shardq.core.settings import Settings
from shardq.core.store.fedbuff import FedBuffStore
from tests.chaos.versions import follows_versions
from tests.core.test_fedbuff import _put_init, fb, take
from tests.core.test_spend import TASK_COST, drain, worker
from tests.core.test_spend_async import in_flight, key, requeue, run
from tests.core.test_windows import make, windowed
from tests.finished import aggregate, workers
from tests.helpers import result_for
from tests.requests import make_request

CLIENTS = 32
SLOTS = 4


def on_queue(engine: Engine) -> int:
    """Messages on the task queue, visible or taken (the workers have finished their polls: every
    task out is one of them)."""
    attrs = engine.sqs.get_queue_attributes(
        QueueUrl=engine.settings.task_queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(v) for v in attrs.values())


def client_tasks_out(engine: Engine, job: JobRecord) -> int:
    """The job's client tasks on the queue (its version's reduce aside), checked against its count."""
    reduces = job.enqueued(job.round, "reduce") - job.done(job.round, "reduce")
    out = on_queue(engine) - reduces
    assert tasks_out(job) - reduces == out
    return out


def request(job_id: str, engine: Engine, *, rounds: int, **fields: Any) -> dict[str, Any]:
    """A linear-model FedBuff job of 32 clients over 4 lanes, K = 4."""
    return make_request(
        job_id=job_id,
        shards=CLIENTS,
        rounds=rounds,
        max_parallel=SLOTS,
        uri="synthetic://linear?dim=4&seed=5",
        num_samples=CLIENTS * 16,
        entrypoint="examples.linear:train",
        hyperparameters={"lr": 0.05, "epochs": 1, "batch_size": 16},
        model={"init_uri": _put_init(engine, dim=4)},
        strategy={"name": "fedbuff", "buffer_size": 4},
        **fields,
    )


@pytest.mark.parametrize("rounds", [3, 8])
def test_a_windowed_fedbuff_job_keeps_max_parallel_tasks_out_and_reaches_every_client_it_can(
    settings: Settings, clients: dict[str, Any], rounds: int
) -> None:
    # GIVEN windows of 2 tasks per lane and a FedBuff job of 32 clients over 4 lanes, K = 4: 3 versions
    # (12 updates, fewer than the clients) or 8 (32 updates, one per client)
    engine: Engine = make(windowed(settings), clients)
    job_id = f"fbw{rounds}"
    most: list[int] = []

    def each(job: JobRecord) -> None:
        if not job.terminal:  # THEN after every step at most 4 client tasks are out, on the real queue
            most.append(client_tasks_out(engine, job))
            assert most[-1] <= SLOTS
            # AND the view's "queued" is those client tasks, whichever version each follows
            assert job.view().queued == most[-1]

    # WHEN it is submitted THEN its first wave is one task per lane, as any job's first window
    engine.submit(request(job_id, engine, rounds=rounds))
    assert engine.store.get_job(job_id).enqueued(0, "train") == SLOTS
    # WHEN real workers (more than the lanes) run it to its end
    job = drive(engine, job_id, each, crew=6)
    # THEN it SUCCEEDED with 4 tasks out at its busiest, and its updates came from as many clients
    # as there were updates, up to every client: a freed slot goes to a client never trained first
    assert job.status == "SUCCEEDED", job.error
    assert max(most) == SLOTS
    applied = [u for u in FedBuffStore(engine.store).all_updates(job_id) if u.state == "applied"]
    assert len(applied) == rounds * 4
    assert len({u.client for u in applied}) == min(CLIENTS, rounds * 4)
    # AND a client reached after version 0 trained its first update from the latest version then,
    # as any next task (the checker follows each update's base to the version it was handed at)
    if rounds == 8:
        assert any(u.seq == 0 and u.base > 0 for u in applied)
    assert follows_versions(engine, job_id) == []


def test_a_freed_slot_goes_to_the_client_that_waited_longest(engine: Engine) -> None:
    # GIVEN a FedBuff job of 4 clients with 2 slots (no windows), a buffer no update fills
    engine.submit(
        {**fb("rot", clients=4, buffer_size=10, rounds=1), "max_parallel": 2, "max_failed_shards": 1}
    )
    queued = {t.shard_id: t for t in take(engine)}
    assert sorted(queued) == [0, 1]  # the first wave: one first task per slot

    def back(client: int, **kw: Any) -> list[tuple[int, int]]:
        engine.ingest([Outcome(result_for(queued.pop(client), **kw))])
        sent = take(engine)
        queued.update((t.shard_id, t) for t in sent)
        assert tasks_out(engine.store.get_job("rot")) == 2 == len(queued)
        return [(t.shard_id, t.round) for t in sent]

    # WHEN updates come back one at a time THEN each freed slot goes to a client never trained, in
    # shard order (a failed update frees its slot too) ...
    assert back(0) == [(2, 0)]
    assert back(1, status="failed") == [(3, 0)]
    # ... then to the client whose last update is the oldest, not back to the one that just finished
    assert back(3) == [(0, 1)]
    assert back(2) == [(1, 1)]
    assert back(0) == [(3, 1)]
    slots = {(u.client, u.seq): u.slot for u in FedBuffStore(engine.store).all_updates("rot")}
    assert slots == {(0, 0): "2:0", (1, 0): "3:0", (3, 0): "0:1", (2, 0): "1:1", (0, 1): "3:1"}


def test_a_job_in_flight_from_before_client_slots_keeps_the_first_tasks_it_sent(engine: Engine) -> None:
    # GIVEN a FedBuff job of 4 clients with 2 slots as the code before client slots ran it: its
    # round-0 fan-out sent every client's first task (the cursor at 4, clients 2 and 3 queued too)
    engine.submit({**fb("old", clients=4, buffer_size=10, rounds=1), "max_parallel": 2})
    queued = {t.shard_id: t for t in take(engine)}
    job = engine.store.get_job("old")
    layout = Layout(engine.advancer.bucket, "old")
    for client in (2, 3):
        queued[client] = train_task(job.request, "old", layout, 0, client, job.request.model.get("init_uri"))
    engine.store.advance_cursor("old", 0, "train", 4)
    # WHEN client 3's first update comes back THEN it is recorded, not rejected as never sent
    assert engine.ingest([Outcome(result_for(queued.pop(3)))]) == []
    # WHEN client 0's comes back too THEN no slot sends a second first task (client 2's is out):
    # each freed slot goes to a client whose update is back
    engine.ingest([Outcome(result_for(queued.pop(0)))])
    sent = sorted((t.shard_id, t.round) for t in take(engine))
    assert sent == [(0, 1), (3, 1)]
    job = engine.store.get_job("old")
    assert job.counters.get(("usent", 0, "train"), 0) == 0 and job.failed_total == 0
    # (its 4 tasks out stay 4, as the job ran them: the count holds each, answered once)
    assert tasks_out(job) == 4
    assert {(u.client, u.seq) for u in FedBuffStore(engine.store).all_updates("old")} == {(0, 0), (3, 0)}


def test_a_duplicated_result_never_hands_out_two_slots(engine: Engine) -> None:
    # GIVEN a FedBuff job of 6 clients with 2 slots
    engine.submit({**fb("dup", clients=6, buffer_size=10, rounds=1), "max_parallel": 2})
    first = {t.shard_id: t for t in take(engine)}
    # (a first update of a client no slot reached yet is one never sent: rejected, not counted)
    forged = replace(result_for(first[0]), shard_id=4)
    failed = engine.ingest([Outcome(forged)])
    assert len(failed) == 1 and "never sent update 0 of client 4" in str(failed[0][1])
    outcome = Outcome(result_for(first[0]))
    # WHEN client 0's result arrives twice in one batch, then again, then its slot's task's record of
    # being sent is lost (a crash before the mark) and it comes a fourth time
    engine.ingest([outcome, outcome])
    engine.ingest([outcome])
    fb_store = FedBuffStore(engine.store)
    fb_store.ddb.update_item(
        TableName=fb_store.table,
        Key={"pk": {"S": "JOB#dup"}, "sk": {"S": "UPD#c000000#n000000"}},
        UpdateExpression="REMOVE next_sent",
    )
    engine.ingest([outcome])
    # THEN its slot went to one task, client 2's first (sent again after the crash: the same task and
    # deduplication id), and 2 tasks are out, as before
    sent = take(engine)
    assert {(t.shard_id, t.round) for t in sent} == {(2, 0)}
    job = engine.store.get_job("dup")
    assert job.counters[("usent", 0, "train")] == 1 and tasks_out(job) == 2
    assert fb_store.counts("dup").applied == 1


def test_a_retried_job_keeps_its_slots(engine: Engine) -> None:
    # GIVEN a FedBuff job of 5 clients with 2 slots and no failure allowed, failed by a NaN update
    engine.submit(
        {**fb("rfail", clients=5, buffer_size=2, rounds=2), "max_parallel": 2, "max_failed_shards": 0}
    )
    first = {t.shard_id: t for t in take(engine)}
    nan = replace(result_for(first[1]), metrics={"loss": float("nan")})
    engine.ingest([Outcome(result_for(first[0])), Outcome(nan)])
    assert engine.store.get_job("rfail").status == "FAILED"
    cut = take(engine)  # the tasks the two freed slots went to: their workers drop them
    assert sorted((t.shard_id, t.round) for t in cut) == [(2, 0), (3, 0)]
    # WHEN it is retried THEN exactly those two tasks go out again: the job keeps 2 slots
    report = retry_failed(engine, "rfail")
    resent = take(engine)
    assert sorted((t.shard_id, t.round) for t in resent) == [(2, 0), (3, 0)]
    assert report.retried == [2, 3] and tasks_out(engine.store.get_job("rfail")) == 2
    # AND it runs to its end, never more than 2 tasks out
    tasks = resent
    for _ in range(50):
        engine.ingest([Outcome(result_for(t)) for t in tasks])
        job = engine.store.get_job("rfail")
        if job.terminal:
            break
        assert tasks_out(job) <= 2 + (job.phase == "reduce")
        tasks = take(engine)
    assert job.status == "SUCCEEDED", job.error
    assert follows_versions(engine, "rfail") == []


def test_a_retry_after_a_crash_between_a_hand_and_its_send_sends_that_task_once(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a FedBuff job of 4 clients with 2 slots and no failure allowed, whose aggregator recorded
    # client 0's first update, handed its slot to client 2 and died before sending client 2's task
    engine.submit(
        {**fb("rcrash", clients=4, buffer_size=10, rounds=1), "max_parallel": 2, "max_failed_shards": 0}
    )
    first = {t.shard_id: t for t in take(engine)}
    given = Outcome(result_for(first[0]))

    def crash(driver: Driver, job: JobRecord, givers: list[Any], *args: Any, **kwargs: Any) -> None:
        if givers:  # (the slot handed, its task not sent yet)
            raise RuntimeError("the aggregator died")

    with monkeypatch.context() as m:
        m.setattr(Driver, "_send", crash)
        assert len(engine.ingest([given])) == 1  # (its result stays on the queue: redelivered)
    assert take(engine) == []
    fb_store = FedBuffStore(engine.store)
    assert {(u.client, u.seq): u.slot for u in fb_store.all_updates("rcrash")} == {(0, 0): "2:0"}
    # AND then failed by client 1's NaN update
    nan = replace(result_for(first[1]), metrics={"loss": float("nan")})
    engine.ingest([Outcome(nan)])
    assert engine.store.get_job("rcrash").status == "FAILED"
    take(engine)
    # WHEN it is retried THEN client 2's first task goes out again, once, and client 1's slot to client 3
    retry_failed(engine, "rcrash")
    assert sorted((t.shard_id, t.round) for t in take(engine)) == [(2, 0), (3, 0)]
    # WHEN client 0's result is then redelivered (its message was never deleted: the crash)
    engine.ingest([given])
    # THEN nothing more is sent: client 2's task is out already (the retry marked the slot's task sent)
    assert take(engine) == []
    job = engine.store.get_job("rcrash")
    assert tasks_out(job) == 2 and fb_store.counts("rcrash").applied == 1


def test_cancel_mid_way_leaves_no_task_out(settings: Settings, clients: dict[str, Any]) -> None:
    # GIVEN a windowed FedBuff job of 32 clients over 4 lanes, a few steps in
    engine: Engine = make(windowed(settings), clients)
    engine.submit(request("fbc", engine, rounds=8))
    crew = workers(engine, SLOTS)
    for _ in range(3):
        for w in crew:
            w.poll_once()
        aggregate(engine)
    job = engine.store.get_job("fbc")
    assert job.status == "RUNNING" and client_tasks_out(engine, job) == SLOTS
    # WHEN it is cancelled (``shardq cancel``) and the workers go on polling
    assert cancel(engine, "fbc").status == "CANCELLED"
    for _ in range(3):
        for w in crew:
            w.poll_once()
        aggregate(engine)
    # THEN it is CANCELLED, no task of it is left on the queue, and none was sent after the cancel
    after = engine.store.get_job("fbc")
    assert after.status == "CANCELLED"
    assert on_queue(engine) == 0
    sent = {k: v for k, v in after.counters.items() if k[0] in ("enq", "usent")}
    assert sent == {k: v for k, v in job.counters.items() if k[0] in ("enq", "usent")}


def drive(
    engine: Engine, job_id: str, each: Callable[[JobRecord], None], steps: int = 400, crew: int = 3
) -> JobRecord:
    """Real workers poll once each, then the aggregator records; until the job ends. ``each`` sees
    the job record after every step."""
    team = workers(engine, crew)
    for _ in range(steps):
        for w in team:
            w.poll_once()
        aggregate(engine)
        job = engine.store.get_job(job_id)
        each(job)
        if job.terminal:
            return job
    raise AssertionError(f"{job_id} did not finish in {steps} steps")


def test_a_budget_stopped_job_with_fewer_slots_hands_no_slot_and_ends_when_its_last_task_is_back(
    engine: Engine,
) -> None:
    # GIVEN a FedBuff job of 5 clients with 2 slots (buffer 3) and a budget of 1.5 updates
    engine.submit({**fb("fb-slots-cap", clients=5, buffer_size=3), "max_parallel": 2, "budget_usd": 0.03})
    sent = dict((key(t), (t, m)) for t, m in in_flight(engine))
    assert sorted(sent) == [(0, 0), (0, 1)]
    # WHEN clients 0 and 1 send their first updates (the budget is spent by the second)
    run(engine, *sent.pop((0, 0)))
    run(engine, *sent.pop((0, 1)))
    job = engine.store.get_job("fb-slots-cap")
    assert job.budget_stop is not None
    # THEN their slots went to clients 2 and 3 (never trained): 2 tasks out, as many as slots
    sent.update((key(t), (t, m)) for t, m in in_flight(engine))
    assert sorted(sent) == [(0, 2), (0, 3)] and tasks_out(job) == 2
    # AND a real worker drops client 3's queued task while client 2's runs
    requeue(engine, sent.pop((0, 3))[1])
    assert worker(engine).poll_once() == 1
    drain(engine)
    job = engine.store.get_job("fb-slots-cap")
    assert job.status == "RUNNING" and tasks_out(job) == 1 == spend.outstanding(job)
    # WHEN client 2's update arrives, its slot goes nowhere, and the job ends FAILED, saying so
    run(engine, *sent.pop((0, 2)))
    job = engine.store.get_job("fb-slots-cap")
    assert job.status == "FAILED" and tasks_out(job) == 0
    assert in_flight(engine) == []
    assert job.cost_micro_usd == 3 * TASK_COST
    assert job.error is not None and "1 queued task dropped unrun" in job.error
