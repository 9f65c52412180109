"""A FedAvg round's critical path through the aggregator: few calls, the same guarantees (#27 item 3).

The aggregator's two steps per round (the round's last train result → the reduce sent; the
reduce's result → the next round sent) are counted in boto3 calls, on the local cloud: the claim
freezes the round, the move returns the job and writes the send's cursor, the reduce result the
batch just recorded is not read back, the round's deadline tick is armed from the move's image.
The guarantees behind those shortcuts are tested here too: a cursor a racing send moved further is
never rewound, a crash between the send and the move sends nothing twice, and the calls run side by
side report their errors.
"""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from benchmarks.round_calls import STEPS, run
from shardq.core.engine import Engine
from shardq.core.jobstore import Cursor, JobStore, Outcome
from shardq.core.side_by_side import both
from shardq.local.cloud import LocalCloud
from tests.helpers import receive_all, result_for, tasks_of
from tests.requests import make_request

# Calls per step at 2 shards (BENCHMARKS.md §14; 11 and 10 before): a regression guard on the
# count, which load does not change (never a timing).
CALLS = {STEPS[0]: 8, STEPS[1]: 6}


def test_a_round_crosses_the_aggregator_in_fourteen_calls(cloud: LocalCloud) -> None:
    # GIVEN a 2-shard, 4-round FedAvg job answered in this process, the aggregator's calls counted
    steps = run(cloud, argparse.Namespace(shards=2, rounds=4))
    # THEN every round's two steps make the counted calls, and no more
    for name, calls in CALLS.items():
        assert [len(s["calls"]) for s in steps[name]] == [calls] * len(steps[name]), name
    close = [op for op, _ in steps[STEPS[0]][0]["calls"]]
    # the claim is the round's close (one UpdateItem before the read of its results), the move the last
    assert close[:4] == [
        "dynamodb:TransactWriteItems",
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        "dynamodb:Query",
    ]
    assert close[-2:] == ["sqs:SendMessageBatch", "dynamodb:UpdateItem"]
    reduce = [op for op, _ in steps[STEPS[1]][0]["calls"]]
    assert "dynamodb:Query" not in reduce  # the reduce result this batch recorded is not read back


def _job_at_reduce(engine: Engine, clients: dict[str, Any], job_id: str) -> None:
    engine.submit(make_request(job_id=job_id, shards=2, rounds=3, max_parallel=2))
    tasks = tasks_of(receive_all(clients["sqs"], engine.settings.task_queue_url))
    assert not engine.ingest([Outcome(result=result_for(t)) for t in tasks])


def test_a_move_never_rewinds_a_cursor_a_racing_send_moved_further(
    engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN a job in round 0's reduce, and a racing send that moved round 1's cursor to 2
    _job_at_reduce(engine, clients, "race")
    reduce = tasks_of(receive_all(clients["sqs"], engine.settings.task_queue_url))
    assert [t.task_type for t in reduce] == ["reduce"]
    store: JobStore = engine.store
    store.advance_cursor("race", 1, "train", 2)
    # WHEN a slower call's move carries the cursor it reached (1)
    moved = store.start_round("race", 1, "s3://m/r0.npz", cursor=Cursor(1))
    # THEN the job moved, and the cursor stayed where the further send left it
    assert moved is not None and (moved.round, moved.phase) == (1, "train")
    assert moved.enqueued(1, "train") == 2 == store.get_job("race").enqueued(1, "train")
    # AND a second move of the same round does nothing
    assert store.start_round("race", 1, "s3://m/r0.npz", cursor=Cursor(2)) is None


def test_a_crash_between_the_send_and_the_move_sends_nothing_twice(
    engine: Engine, clients: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a round whose reduce result arrives, and an aggregator that dies after sending the
    # next round's tasks, before the move that records them (their cursor rides on the move)
    _job_at_reduce(engine, clients, "crash")
    (reduce,) = tasks_of(receive_all(clients["sqs"], engine.settings.task_queue_url))
    moves = engine.store.start_round

    def die(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected crash: the aggregator died before the move")

    monkeypatch.setattr(engine.store, "start_round", die)
    answer = Outcome(result=result_for(reduce))
    assert engine.ingest([answer])  # the batch fails: its result comes back
    job = engine.store.get_job("crash")
    assert (job.round, job.phase, job.enqueued(1, "train")) == (0, "reduce", 0)
    # WHEN the result is redelivered to a healthy aggregator
    monkeypatch.setattr(engine.store, "start_round", moves)
    assert not engine.ingest([answer])
    # THEN the job is in round 1 with its cursor written, and each of its tasks is queued once
    job = engine.store.get_job("crash")
    assert (job.round, job.phase, job.enqueued(1, "train")) == (1, "train", 2)
    tasks = tasks_of(receive_all(clients["sqs"], engine.settings.task_queue_url))
    assert sorted((t.round, t.task_type, t.shard_id) for t in tasks) == [(1, "train", 0), (1, "train", 1)]


def test_calls_side_by_side_wait_for_each_other_and_raise_the_first_error() -> None:
    done: list[str] = []
    assert both(lambda: done.append("first") or 7, lambda: done.append("second")) == 7
    assert sorted(done) == ["first", "second"]
    with pytest.raises(KeyError):
        both(lambda: 1, lambda: {}["missing"])
    with pytest.raises(ValueError):  # both failed: the first's error
        both(lambda: int("x"), lambda: {}["missing"])
