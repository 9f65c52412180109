"""A retried shard is never failed by an older copy of its task (local endpoint).

``shardq retry`` sends a failed shard's task again under a fresh retry generation, while an
older copy may still be out there: on a worker, or waiting out its receives until SQS
dead-letters it. Its failure, arriving after the retry, is kept apart as late and never counted
(``shardq.core.store.retried``); its success still counts, first one wins. Real queues, table and
handlers (``tests/chaos/model_world.py``), the real retry.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from shardq.core import enqueue as enqueue_module
from shardq.core.operations import retry_failed
from tests.chaos.history import check, collect
from tests.chaos.model_world import Held, World
from tests.requests import make_request

pytestmark = pytest.mark.local_cloud

MAX_RECEIVES = 2


@pytest.fixture
def world(clients: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """A fresh world whose Lambda handlers use its engine."""
    from lambdas import common, dlq_handler

    w = World.create(clients, max_receive_count=MAX_RECEIVES)
    monkeypatch.setattr(common, "engine", lambda: w.engine)
    monkeypatch.setattr(dlq_handler, "engine", lambda: w.engine)
    monkeypatch.setattr(enqueue_module, "CHUNK", 2)
    yield w


def held_shard(world: World, shard: int, generation: int = 0) -> Held:
    """The held task of ``shard`` at ``generation``, taking tasks until it is held."""
    for _ in range(10):
        mine = [h for h in world.held if (h.task.shard_id, h.task.generation) == (shard, generation)]
        if mine:
            return mine[0]
        world.take(10)
    raise AssertionError(f"shard {shard} generation {generation} never reached a worker")


def post(world: World, body: str) -> None:
    world.sqs.send_message(QueueUrl=world.settings.results_queue_url, MessageBody=body)
    world.posted.append(body)


def fail_and_retry(world: World, job_id: str) -> Held:
    """Shard 1's worker posts a failure and dies before deleting its task (the task comes back);
    the failure is counted; the operator retries. Returns shard 0's held task."""
    world.engine.submit(make_request("map", job_id=job_id, shards=2, max_parallel=2, max_failed_shards=1))
    first = held_shard(world, 0)
    old = held_shard(world, 1)
    post(world, world.result_body(old.task, "failed"))
    world.crash(old)
    world.settle()
    assert world.engine.store.get_job(job_id).failed_total == 1
    report = retry_failed(world.engine, job_id)
    assert (report.retried, report.generation) == ([1], 1)
    return first


def finish_ok(world: World, job_id: str) -> None:
    """Every task left reports ok (the retried one included) and the aggregator takes it all."""
    for _ in range(10):
        world.take(10)
        for held in list(world.held):
            world.finish(held, [world.result_body(held.task, "ok")])
        world.settle()
        if world.engine.store.get_job(job_id).terminal:
            return


def test_a_stale_task_dead_lettered_after_a_retry_does_not_fail_the_retried_shard(world: World) -> None:
    # GIVEN a map job whose shard 1 failed, its task still on the queue, retried as generation 1
    first = fail_and_retry(world, "stale-dlq")
    # WHEN the old copy (generation 0) dies on workers until SQS dead-letters it
    old = held_shard(world, 1, generation=0)
    assert world.poison(old, MAX_RECEIVES)
    world.settle()
    # THEN its failure is kept as late, uncounted, and the shard waits for its retried task
    job = world.engine.store.get_job("stale-dlq")
    assert (job.status, job.failed_total, job.failed(0, "train")) == ("RUNNING", 0, 0)
    (late,) = world.engine.store.late_results("stale-dlq")
    assert (late.source, late.result.status, late.result.generation) == ("dlq", "failed", 0)
    assert late.result.shard_id == 1
    # WHEN the retried task and shard 0 succeed
    world.finish(first, [world.result_body(first.task, "ok")])
    finish_ok(world, "stale-dlq")
    # THEN the job succeeds with the retried shard's result, no failure anywhere
    job = world.engine.store.get_job("stale-dlq")
    assert job.status == "SUCCEEDED", job.error
    outcome = {o.result.shard_id: o.result for o in world.engine.store.all_results("stale-dlq")}
    assert (outcome[1].status, outcome[1].generation) == ("succeeded", 1)
    h = collect(world.engine, "stale-dlq")
    assert h.manifest is not None and h.manifest["failed"] == []
    assert not check(h, status="SUCCEEDED")


def test_a_stale_failed_result_after_a_retry_is_late(world: World) -> None:
    # GIVEN a map job whose shard 1 failed and was retried as generation 1
    first = fail_and_retry(world, "stale-res")
    # WHEN the old attempt's failure is delivered again after the retry
    (failure,) = [b for b in world.posted if '"status":"failed"' in b]
    post(world, failure)
    world.settle()
    # THEN it is late: not counted, not a duplicate that would take the shard's place
    job = world.engine.store.get_job("stale-res")
    assert (job.status, job.failed_total) == ("RUNNING", 0)
    (late,) = world.engine.store.late_results("stale-res")
    assert (late.result.shard_id, late.result.status, late.result.generation) == (1, "failed", 0)
    # and the retried task's success counts
    world.finish(first, [world.result_body(first.task, "ok")])
    finish_ok(world, "stale-res")
    job = world.engine.store.get_job("stale-res")
    assert job.status == "SUCCEEDED", job.error
    assert not check(collect(world.engine, "stale-res"), status="SUCCEEDED")


def test_an_older_copys_success_after_a_retry_still_counts(world: World) -> None:
    # GIVEN shard 1 retried as generation 1 while its old copy is still on a worker
    first = fail_and_retry(world, "stale-ok")
    old = held_shard(world, 1, generation=0)
    # WHEN the old copy trains to its end and succeeds: a real training of the same task
    world.finish(old, [world.result_body(old.task, "ok")])
    world.settle()
    # THEN it counts (first one wins) and the retried task's result is a duplicate
    (row,) = [o for o in world.engine.store.all_results("stale-ok") if o.result.shard_id == 1]
    assert (row.result.status, row.result.generation) == ("succeeded", 0)
    world.finish(first, [world.result_body(first.task, "ok")])
    finish_ok(world, "stale-ok")
    assert world.engine.store.get_job("stale-ok").status == "SUCCEEDED"
    assert world.engine.store.late_results("stale-ok") == []


def test_a_failure_of_a_shard_no_retry_sent_again_still_counts(world: World) -> None:
    # GIVEN a job retried once (generation 1) for shard 1, while shard 0 still runs at generation 0
    first = fail_and_retry(world, "not-stale")
    # WHEN shard 0 fails for real: its task is older than the job's retry, but was never retried
    world.finish(first, [world.result_body(first.task, "failed")])
    world.settle()
    # THEN the failure counts (a stale-generation rule by job alone would hang the job here)
    job = world.engine.store.get_job("not-stale")
    assert job.failed_total == 1 and world.engine.store.late_results("not-stale") == []
    (row,) = [o for o in world.engine.store.all_results("not-stale") if o.result.shard_id == 0]
    assert (row.result.status, row.result.generation) == ("failed", 0)


def test_a_stale_failure_and_the_retried_success_in_one_batch_count_the_success(world: World) -> None:
    # GIVEN shard 1 retried as generation 1, its old attempt's failure still to be delivered again
    first = fail_and_retry(world, "one-batch")
    (failure,) = [b for b in world.posted if '"status":"failed"' in b]
    new = held_shard(world, 1, generation=1)
    # WHEN the stale failure and the retried task's success reach the aggregator in one batch
    world.sqs.send_message(QueueUrl=world.settings.results_queue_url, MessageBody=failure)
    world.finish(new, [world.result_body(new.task, "ok")])
    world.settle()
    # THEN the success counts (the failure is not kept in its place, to be found stale and lost)
    (row,) = [o for o in world.engine.store.all_results("one-batch") if o.result.shard_id == 1]
    assert (row.result.status, row.result.generation) == ("succeeded", 1)
    world.finish(first, [world.result_body(first.task, "ok")])
    finish_ok(world, "one-batch")
    assert world.engine.store.get_job("one-batch").status == "SUCCEEDED"
