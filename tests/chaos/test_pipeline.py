"""Chaos scenarios about the Lambdas and the clients: aggregator crashes and races, fan-out
faults, a splitter killed half-way, DynamoDB errors while recording.

Workers are real ``shardq worker`` processes here too (they train the deterministic model
the run is compared with); the faults are injected in-process, where the Lambdas run.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from lambdas import aggregator, splitter
from shardq.core import enqueue as enqueue_module
from shardq.core.enqueue import Enqueuer
from shardq.core.fanout import FanOutError
from shardq.core.jobstore import JobStore
from tests.chaos.conftest import BASE_SEED, Rig
from tests.chaos.harness import InjectedCrash, SeededFlakySQS, request, run_until
from tests.chaos.test_workers import finish, starts
from tests.helpers import CountingClient, FlakySQS, LambdaContext, count_messages, sqs_event

pytestmark = pytest.mark.local_cloud


class Injector:
    """Crashes at a seeded one of the first three opportunities, then with probability ``p``
    (seeded), at most ``limit`` times, while ``armed``: every seed injects at least one crash."""

    def __init__(self, seed: int, p: float = 0.5, limit: int = 3) -> None:
        self.rng = random.Random(seed)
        self.first = self.rng.randrange(3)
        self.p = p
        self.limit = limit
        self.calls = 0
        self.fired = 0
        self.armed = True
        self.lock = threading.Lock()

    def roll(self) -> bool:
        with self.lock:
            if not self.armed or self.fired >= self.limit:
                return False
            self.calls += 1
            if self.calls - 1 != self.first and self.rng.random() >= self.p:
                return False
            self.fired += 1
            return True


# 5 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["before_write", "after_write", "after_enqueue", "before_ack"])
def test_aggregator_crash_is_repaired_by_redelivery(
    rig: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    # GIVEN an aggregator that dies (seeded) at one point of its work: before the DynamoDB
    # transaction, after it, after enqueueing the next phase (before the transition), or
    # after everything but before the event source deletes the batch
    r = rig(task_visibility_s=2)
    payload = request(f"crash-{point.replace('_', '-')}", shards=3, rounds=2)
    job_id = payload["job_id"]
    r.engine.submit(payload)
    crash = Injector(BASE_SEED + 50 + len(point))
    record, enqueue = JobStore.record, Enqueuer.enqueue

    def record_hook(self: JobStore, outcomes: Any, **kwargs: Any) -> Any:
        if point == "before_write" and crash.roll():
            raise InjectedCrash(point)
        out = record(self, outcomes, **kwargs)
        if point == "after_write" and crash.roll():
            raise InjectedCrash(point)
        return out

    def enqueue_hook(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = enqueue(self, *args, **kwargs)
        if point == "after_enqueue" and crash.roll():
            raise InjectedCrash(point)
        return out

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        out = aggregator.aggregate(event, context)
        if point == "before_ack" and crash.roll():
            raise InjectedCrash(point)
        return out

    monkeypatch.setattr(JobStore, "record", record_hook)
    monkeypatch.setattr(Enqueuer, "enqueue", enqueue_hook)
    r.pump.aggregator = handler
    r.pool.start()
    run_until(r.engine, job_id, r.pump, pool=r.pool, timeout=90)
    crash.armed = False
    # THEN crashes happened, the redelivered batches repaired them, and nothing counted twice
    assert crash.fired >= 1
    assert r.pump.crashes == crash.fired
    finish(r, job_id, payload)


# 6 ----------------------------------------------------------------------------------------


def test_two_aggregators_racing_on_the_last_shards_of_each_round(rig: Callable[..., Rig]) -> None:
    # GIVEN a job whose results are held until a phase is complete, then handed to two
    # aggregator invocations at once, both batches holding the phase's last results
    r = rig(task_visibility_s=2)
    payload = request("race", shards=4, rounds=2)
    r.engine.submit(payload)
    events = CountingClient(r.engine.events)
    r.engine.events = r.engine.finisher.events = events
    r.pool.start()
    sqs, s = r.clients["sqs"], r.settings
    races = 0
    deadline = time.monotonic() + 90
    while r.engine.store.get_job("race").status == "RUNNING":
        assert time.monotonic() < deadline
        r.pool.tick()
        if count_messages(sqs, s.task_queue_url) or not count_messages(sqs, s.results_queue_url):
            time.sleep(0.1)
            continue
        msgs = r.pump.receive(s.results_queue_url, 100)
        half = max(1, len(msgs) // 2)
        batches = [msgs[:half] + msgs[-1:], msgs[half:] or msgs[-1:]]
        barrier = threading.Barrier(2)
        responses: list[dict[str, Any]] = [{}, {}]

        def invoke(
            i: int,
            batch: list[dict[str, Any]],
            barrier: threading.Barrier = barrier,
            responses: list[dict[str, Any]] = responses,
        ) -> None:
            barrier.wait()
            responses[i] = aggregator.aggregate(
                sqs_event(batch, r.pump.arns[s.results_queue_url]), LambdaContext()
            )

        threads = [threading.Thread(target=invoke, args=(i, b)) for i, b in enumerate(batches)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert responses == [{"batchItemFailures": []}] * 2
        r.pump.delete(s.results_queue_url, list({m["MessageId"]: m for m in msgs}.values()))
        races += 1
    # THEN one transition per phase, one Job Finished event, every shard trained and counted once
    assert races >= 4  # two rounds × (train, reduce)
    assert events.counts.get("put_events") == 1
    assert starts(r, "race") == {(rr, sh): 1 for rr in range(2) for sh in range(4)}
    finish(r, "race", payload)


# 8 ----------------------------------------------------------------------------------------


def test_send_message_batch_faults_during_fan_out_enqueue_exactly_n(rig: Callable[..., Rig]) -> None:
    # GIVEN a task-queue client that throttles calls, drops entries and loses the answers to
    # entries it did send (seeded), used by the splitter and by the aggregator's next-round fan-out
    r = rig(task_visibility_s=2)
    flaky = SeededFlakySQS(r.clients["sqs"], BASE_SEED + 80, p_throttle=0.2, p_drop=0.2, p_lost=0.15)
    r.engine.fanout.sqs = flaky
    r.engine.fanout.max_in_flight = 1  # one batch at a time: the fault schedule follows the seed
    payload = request("fanout", shards=12, rounds=2)
    r.engine.submit(payload)
    assert count_messages(r.clients["sqs"], r.settings.task_queue_url) == 12
    r.pool.start()
    run_until(r.engine, "fanout", r.pump, pool=r.pool, timeout=90)
    # THEN faults of every kind happened, and each task was delivered (and trained) exactly once
    assert all(flaky.injected.values()), flaky.injected
    assert starts(r, "fanout") == {(rr, sh): 1 for rr in range(2) for sh in range(12)}
    finish(r, "fanout", payload)


# 9 ----------------------------------------------------------------------------------------


class ForgetfulSQS:
    """A task queue whose deduplication memory is gone (the 5-minute window has passed):
    every deduplication id gets a suffix SQS has never seen."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.exceptions = real.exceptions

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        entries = [{**e, "MessageDeduplicationId": e["MessageDeduplicationId"] + "#later"} for e in Entries]
        return dict(self.real.send_message_batch(QueueUrl=QueueUrl, Entries=entries))


@pytest.mark.parametrize("window", ["inside", "beyond"])
def test_splitter_killed_half_way_reinvoked_and_the_request_sent_twice(
    rig: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch, window: str
) -> None:
    # GIVEN an 8-shard job checkpointed every 3 tasks
    monkeypatch.setattr(enqueue_module, "CHUNK", 3)
    r = rig(task_visibility_s=2)
    job_id = f"split-{window}"
    payload = request(job_id, shards=8, rounds=2)
    real = r.clients["sqs"]
    # WHEN the splitter dies after the first chunk's send (cursor 3) ...
    r.engine.fanout.sqs = FlakySQS(real, die_after=1)
    with pytest.raises(FanOutError):
        splitter.split(payload, LambdaContext())
    assert r.engine.store.get_job(job_id).enqueued(0, "train") == 3
    # ... is re-invoked and dies between sending the second chunk and saving its cursor ...
    r.engine.fanout.sqs = real
    save = r.engine.store.advance_cursor
    died = []

    def crash_before_checkpoint(job: str, round_no: int, phase: str, value: int, **kwargs: Any) -> None:
        if value == 6 and not died:
            died.append(value)
            raise InjectedCrash("killed before the checkpoint")
        save(job, round_no, phase, value, **kwargs)

    monkeypatch.setattr(r.engine.store, "advance_cursor", crash_before_checkpoint)
    with pytest.raises(InjectedCrash):
        splitter.split(payload, LambdaContext())
    assert r.engine.store.get_job(job_id).enqueued(0, "train") == 3
    assert count_messages(real, r.settings.task_queue_url) == 6
    # ... and the same request is sent twice more, within the dedup window or after it
    r.engine.fanout.sqs = real if window == "inside" else ForgetfulSQS(real)
    answers = [splitter.split(payload, LambdaContext()) for _ in range(2)]
    assert [(a["ok"], a["created"]) for a in answers] == [(True, False), (True, False)]
    queued = count_messages(real, r.settings.task_queue_url)
    r.engine.fanout.sqs = real
    # THEN inside the window: exactly 8 tasks. Beyond it: only the chunk in flight at the crash
    # is sent again (3 extra), never anything before the cursor, and the second resend adds nothing
    assert queued == (8 if window == "inside" else 8 + 3)
    assert r.engine.store.get_job(job_id).enqueued(0, "train") == 8
    r.pool.start()
    run_until(r.engine, job_id, r.pump, pool=r.pool, timeout=90)
    trained = starts(r, job_id)
    assert sum(n for (rr, _), n in trained.items() if rr == 0) == queued
    finish(r, job_id, payload)


# 10 ---------------------------------------------------------------------------------------


class FlakyDynamoDB:
    """TransactWriteItems faults (seeded): throttled before the write, a transaction conflict,
    or the write done and its answer lost (the retry then meets its own conditional checks)."""

    def __init__(self, real: Any, seed: int) -> None:
        self.real = real
        self.exceptions = real.exceptions
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.injected = {"throttled": 0, "conflict": 0, "lost": 0}
        self.script = self.rng.sample(["throttled", "conflict", "lost"], 3)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def transact_write_items(self, **kwargs: Any) -> Any:
        with self.lock:
            # The first three transactions fail once each way (seeded order); later ones at random.
            if self.script:
                fate = self.script.pop(0)
            else:
                fate = self.rng.choices(("ok", "throttled", "conflict", "lost"), (0.45, 0.2, 0.15, 0.2))[0]
            if fate != "ok":
                self.injected[fate] += 1
        ex = self.real.exceptions
        if fate == "throttled":
            raise ex.ProvisionedThroughputExceededException(
                {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "injected"}},
                "TransactWriteItems",
            )
        if fate == "conflict":
            n = len(kwargs["TransactItems"])
            raise ex.TransactionCanceledException(
                {
                    "Error": {"Code": "TransactionCanceledException", "Message": "injected"},
                    "CancellationReasons": [{"Code": "None"}] * (n - 1) + [{"Code": "TransactionConflict"}],
                },
                "TransactWriteItems",
            )
        out = self.real.transact_write_items(**kwargs)
        if fate == "lost":
            raise ex.InternalServerError(
                {"Error": {"Code": "InternalServerError", "Message": "injected: answer lost"}},
                "TransactWriteItems",
            )
        return out


def test_dynamodb_errors_while_recording_are_retried_and_counted_once(rig: Callable[..., Rig]) -> None:
    # GIVEN the aggregator's DynamoDB client failing ~55 % of the recording transactions (seeded)
    r = rig(task_visibility_s=2)
    payload = request("ddb", shards=6, rounds=2)
    r.engine.submit(payload)
    flaky = FlakyDynamoDB(r.clients["dynamodb"], BASE_SEED + 100)
    r.engine.ddb = r.engine.store.ddb = flaky
    r.pool.start()
    run_until(r.engine, "ddb", r.pump, pool=r.pool, timeout=90)
    r.engine.ddb = r.engine.store.ddb = r.clients["dynamodb"]
    # THEN every kind of error happened and every result was still counted exactly once
    assert all(flaky.injected.values()), flaky.injected
    finish(r, "ddb", payload)
