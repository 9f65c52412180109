"""The batch adapter (lambdas/batch.py): one flush per batch, failures reported by public Powertools API.

Every test records into the real local-cloud table; the FIFO tests deliver real messages from the
test's FIFO task DLQ (group ids and sequence numbers as SQS gives them) and do what an event source
mapping does with the answer: delete the successes, let the failures come back.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from lambdas import aggregator, common, dlq_handler
from lambdas.batch import STANDARD_QUEUE, SqsSource, process_batch
from shardq.core.contracts import ShardResult, ShardTask
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.settings import Settings
from shardq.local.resources import dlq_urls
from tests.helpers import (
    LambdaContext,
    body_event,
    count_messages,
    gather_batch,
    queue_arn,
    receive_all,
    result_for,
    sqs_event,
)

FIFO_STOP_BATCH = SqsSource(fifo=True)
FIFO_STOP_GROUP = SqsSource(fifo=True, skip_group_on_error=True)


class CountingFlush:
    """The handlers' real flush (``common.ingest``), counting its calls and what each call got."""

    def __init__(self) -> None:
        self.calls: list[list[Outcome]] = []

    def __call__(self, outcomes: list[Outcome]) -> list[tuple[Outcome, Exception]]:
        self.calls.append(list(outcomes))
        return common.ingest(outcomes, LambdaContext())


def submit_map(engine: Engine, job_id: str, shards: int) -> None:
    """A map job with one FIFO lane per shard and a failure budget no test exhausts."""
    engine.submit(
        {
            "job_id": job_id,
            "kind": "map",
            "dataset": {"num_samples": 10 * shards},
            "sharding": {"shard_count": shards},
            "max_parallel": shards,
            "max_failed_shards": shards,
        }
    )


def queued_tasks(sqs: Any, settings: Settings) -> list[tuple[ShardTask, str]]:
    """Every task on the task queue with its message group id, by shard."""
    msgs = receive_all(sqs, settings.task_queue_url)
    pairs = [(ShardTask.from_json(m["Body"]), m["Attributes"]["MessageGroupId"]) for m in msgs]
    return sorted(pairs, key=lambda p: p[0].shard_id)


def send_dead(sqs: Any, url: str, tasks: list[tuple[ShardTask, str]]) -> None:
    """Put tasks on the FIFO task DLQ in this order, each in its own message group, as redrive does."""
    for task, group in tasks:
        sqs.send_message(QueueUrl=url, MessageBody=task.to_json(), MessageGroupId=group)


def deliver(sqs: Any, url: str, run: Any) -> tuple[list[dict[str, Any]], set[str]]:
    """One event source mapping round: receive a batch, run it, delete successes, return failures.

    The failed messages are made visible again at once (the mapping leaves them to the visibility
    timeout; the test does not wait it out). Returns the batch's messages and the failed ids.
    """
    msgs = gather_batch(sqs, url, 10)
    response = run(sqs_event(msgs, queue_arn(sqs, url)))
    failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
    for m in msgs:
        if m["MessageId"] in failed:
            sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
        else:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return msgs, failed


def job_of(message: dict[str, Any]) -> str:
    return str(json.loads(message["Body"])["job_id"])


def test_fifo_flush_failure_stops_the_batch_and_the_redelivery_counts_nothing_twice(
    lambda_env: Settings, engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN dead tasks of job "a" (known, still running) interleaved with those of "late" (unknown so far)
    sqs = clients["sqs"]
    submit_map(engine, "a", 5)
    a = queued_tasks(sqs, lambda_env)
    late = [(dataclasses.replace(t, job_id="late"), f"late:{t.shard_id}") for t, _ in a[:2]]
    dlq = dlq_urls(sqs, lambda_env)["tasks"]
    send_dead(sqs, dlq, [a[0], late[0], a[1], late[1], a[2]])
    flush = CountingFlush()

    def run(event: dict[str, Any]) -> dict[str, Any]:
        return process_batch(event, parse=dlq_handler.parse, flush=flush, source=FIFO_STOP_BATCH)

    # WHEN a FIFO consumer that stops at the first failure gets them in one batch
    msgs, failed = deliver(sqs, dlq, run)
    # THEN one flush recorded every parsed outcome; "late" failed in it, and from the first "late"
    # record on, every record is reported failed (FIFO order), "a"'s recorded ones included
    assert len(msgs) == 5
    assert [len(c) for c in flush.calls] == [5]
    first = next(i for i, m in enumerate(msgs) if job_of(m) == "late")
    assert failed == {m["MessageId"] for m in msgs[first:]}
    assert any(job_of(m) == "a" for m in msgs[first:]), "the batch must put an 'a' record after a failure"
    assert engine.status("a").failed == 3
    # WHEN the job exists by the redelivery
    submit_map(engine, "late", 2)
    msgs, failed = deliver(sqs, dlq, run)
    # THEN the redelivered records all succeed and nothing is counted twice
    assert failed == set()
    assert len(msgs) == 5 - first
    assert engine.status("a").failed == 3
    assert len(engine.store.results("a", 0)) == 3
    assert engine.status("late").failed == 2
    assert count_messages(sqs, dlq) == 0


def test_dlq_handler_fails_only_the_group_of_an_unknown_job(
    lambda_env: Settings, engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN a batch of dead tasks where one group belongs to a job the table does not know
    sqs = clients["sqs"]
    submit_map(engine, "a", 3)
    a = queued_tasks(sqs, lambda_env)
    ghost = (dataclasses.replace(a[0][0], job_id="ghost"), "ghost:0")
    dlq = dlq_urls(sqs, lambda_env)["tasks"]
    send_dead(sqs, dlq, [a[0], ghost, a[1], a[2]])
    # WHEN the DLQ handler (FIFO, skip_group_on_error) consumes it
    msgs, failed = deliver(sqs, dlq, lambda event: dlq_handler.handler(event, LambdaContext()))
    # THEN only the ghost's record fails; every record of "a" is recorded and acknowledged
    assert failed == {m["MessageId"] for m in msgs if job_of(m) == "ghost"}
    assert len(failed) == 1
    assert engine.status("a").failed == 3
    assert count_messages(sqs, dlq) == 1


def test_fifo_group_mate_recorded_by_the_flush_is_redelivered_and_counted_once(
    lambda_env: Settings, engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN a forged dead task (a shard job "a" never planned) ahead of a real one in the same group
    sqs = clients["sqs"]
    submit_map(engine, "a", 5)
    a = queued_tasks(sqs, lambda_env)
    group = a[1][1]
    forged = (dataclasses.replace(a[1][0], shard_id=50, shard_count=99), group)
    dlq = dlq_urls(sqs, lambda_env)["tasks"]
    send_dead(sqs, dlq, [a[0], forged, a[1], a[2]])
    flush = CountingFlush()

    def run(event: dict[str, Any]) -> dict[str, Any]:
        return process_batch(event, parse=dlq_handler.parse, flush=flush, source=FIFO_STOP_GROUP)

    # WHEN the batch is flushed: the forged outcome is rejected alone, its group-mate recorded
    msgs, failed = deliver(sqs, dlq, run)
    # THEN the group stops at the forged record: it and its group-mate are reported failed
    by_shard = {json.loads(m["Body"])["shard_id"]: m["MessageId"] for m in msgs}
    assert failed == {by_shard[50], by_shard[a[1][0].shard_id]}
    assert [len(c) for c in flush.calls] == [4]
    assert engine.status("a").failed == 3
    # WHEN an operator removes the forged message and the group-mate comes back
    for m in gather_batch(sqs, dlq, 10):
        if json.loads(m["Body"])["shard_id"] == 50:
            sqs.delete_message(QueueUrl=dlq, ReceiptHandle=m["ReceiptHandle"])
        else:
            sqs.change_message_visibility(QueueUrl=dlq, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
    msgs, failed = deliver(sqs, dlq, run)
    # THEN it succeeds, and the shard it already recorded is not counted again
    assert [json.loads(m["Body"])["shard_id"] for m in msgs] == [a[1][0].shard_id]
    assert failed == set()
    assert engine.status("a").failed == 3
    assert len(engine.store.results("a", 0)) == 3
    assert count_messages(sqs, dlq) == 0


@pytest.mark.parametrize(
    ("source", "failed_ids", "recorded"),
    [
        (FIFO_STOP_BATCH, {"m-1", "m-2", "m-3"}, 1),  # nothing after the malformed record is recorded
        (FIFO_STOP_GROUP, {"m-1", "m-2"}, 2),  # only its group stops
    ],
    ids=["stop-batch", "skip-group"],
)
def test_fifo_parse_failure_holds_back_what_fifo_holds_back(
    lambda_env: Settings,
    engine: Engine,
    clients: dict[str, Any],
    source: SqsSource,
    failed_ids: set[str],
    recorded: int,
) -> None:
    submit_map(engine, "a", 3)
    a = queued_tasks(clients["sqs"], lambda_env)
    event = body_event([a[0][0].to_json(), "{broken", a[1][0].to_json(), a[2][0].to_json()])
    for record, group in zip(event["Records"], ["a:x", "a:y", "a:y", "a:z"], strict=True):
        record["attributes"]["MessageGroupId"] = group
    flush = CountingFlush()
    response = process_batch(event, parse=dlq_handler.parse, flush=flush, source=source)
    assert {f["itemIdentifier"] for f in response["batchItemFailures"]} == failed_ids
    assert [len(c) for c in flush.calls] == [recorded]
    assert engine.status("a").failed == recorded


def test_standard_queue_fails_each_bad_record_alone_in_one_flush(
    lambda_env: Settings, engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN a results batch with a malformed record, an unknown job's result and a forged shard
    submit_map(engine, "a", 4)
    tasks = [t for t, _ in queued_tasks(clients["sqs"], lambda_env)]
    ghost = ShardResult(job_id="ghost", round=0, shard_id=0, task_type="train", status="succeeded")
    forged = dataclasses.replace(result_for(tasks[0]), shard_id=50)
    bodies = [result_for(tasks[0]).to_json(), "not json", ghost.to_json(), result_for(tasks[1]).to_json()]
    bodies += [forged.to_json(), result_for(tasks[2]).to_json()]
    flush = CountingFlush()

    def run() -> dict[str, Any]:
        return process_batch(body_event(bodies), parse=aggregator.parse, flush=flush, source=STANDARD_QUEUE)

    # WHEN the aggregator's adapter runs it, twice (the second time as a full redelivery)
    first, second = run(), run()
    # THEN each bad record fails alone, the good ones after it are not held back, one flush per batch
    expected = [{"itemIdentifier": i} for i in ("m-1", "m-2", "m-4")]
    assert first["batchItemFailures"] == second["batchItemFailures"] == expected
    assert [len(c) for c in flush.calls] == [5, 5]
    view = engine.status("a")
    assert (view.status, view.done) == ("RUNNING", 3)
    assert len(engine.store.results("a", 0)) == 3


def test_standard_queue_whole_batch_failed_raises_for_a_full_retry(lambda_env: Settings) -> None:
    ghost = ShardResult(job_id="ghost", round=0, shard_id=0, task_type="train", status="succeeded")
    with pytest.raises(BatchProcessingError):
        aggregator.handler(body_event([ghost.to_json(), "{"]), LambdaContext())
