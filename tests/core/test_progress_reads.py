"""Reads that do not grow with the job: the ``by_recorded`` index, against the local cloud."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.progress_reads import (
    OVERLAP_S,
    PENDING_POLLS,
    SKEW_S,
    FailureFollower,
    JobOutcomes,
    OutcomeFeed,
)
from shardq.core.settings import Settings
from shardq.local.resources import provision, stack_template
from tests.helpers import Clock, CountingClient, receive_all, result_for, tasks_of
from tests.requests import make_request

pytestmark = pytest.mark.local_cloud


def _stamp(seconds_ago: float) -> str:
    moment = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _job(engine: Engine, settings: Settings, clients: dict[str, Any], shards: int = 6) -> dict[int, Any]:
    engine.submit(make_request("map", job_id="feed", shards=shards, max_failed_shards=shards))
    return {t.shard_id: t for t in tasks_of(receive_all(clients["sqs"], settings.task_queue_url))}


def _index_queries(client: CountingClient) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(kw, answer) for name, kw, answer in client.calls if name == "query" and kw.get("IndexName")]


def test_the_feed_returns_each_outcome_once_and_reads_only_what_came_since(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a map job with 3 of its 6 outcomes recorded, followed by a feed without overlap
    tasks = _job(engine, settings, clients)
    engine.store.record([Outcome(result_for(tasks[s])) for s in (0, 1, 2)])
    counting = CountingClient(engine.store.ddb)
    engine.store.ddb = counting
    feed = OutcomeFeed(engine.store, "feed", overlap_s=0)
    # WHEN it reads, THEN it returns the 3, oldest first; a read with nothing new returns none
    assert sorted(i.record.result.shard_id for i in feed.read()) == [0, 1, 2]
    assert feed.read() == []
    # WHEN two more are recorded, THEN the next read returns those two alone, from a key range that
    # starts at the newest stamp seen: the three earlier items are not read again
    engine.store.record([Outcome(result_for(tasks[s], status="failed")) for s in (3, 4)])
    fresh = feed.read()
    assert sorted(i.record.result.shard_id for i in fresh) == [3, 4] and all(i.failed for i in fresh)
    query, answer = _index_queries(counting)[-1]
    earlier = [r.recorded_at for r in engine.store.results("feed", 0)[:3]]
    assert query["ExpressionAttributeValues"][":since"]["S"] == max(earlier)
    # the two new ones, and the earlier ones that share the newest stamp (one transaction)
    assert answer["Count"] == 2 + earlier.count(max(earlier))


def test_an_outcome_readable_late_within_the_overlap_is_returned_once(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a feed that has read the job's outcomes
    tasks = _job(engine, settings, clients)
    engine.store.record([Outcome(result_for(tasks[0]))])
    feed = OutcomeFeed(engine.store, "feed")
    assert len(feed.read()) == 1
    # WHEN an outcome stamped 2 s before the newest seen becomes readable only now (a transaction
    # that committed late, an index that lagged)
    clients["dynamodb"].put_item(
        TableName=settings.job_table, Item=Outcome(result_for(tasks[1])).item(_stamp(2))
    )
    # THEN the next read returns it, and the one after that returns nothing again
    assert [i.record.result.shard_id for i in feed.read()] == [1]
    assert feed.read() == []


def test_a_shard_recorded_again_after_a_retry_is_returned_again(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a feed that returned shard 0's failure
    tasks = _job(engine, settings, clients)
    engine.store.record([Outcome(result_for(tasks[0], status="failed"))])
    feed = OutcomeFeed(engine.store, "feed")
    assert [i.failed for i in feed.read()] == [True]
    # WHEN the failure is forgotten and the shard is recorded again (a retry), with a newer stamp
    key = Outcome(result_for(tasks[0])).key()
    clients["dynamodb"].delete_item(TableName=settings.job_table, Key=key)
    engine.store.record([Outcome(result_for(tasks[0]))])
    # THEN the feed returns the new outcome
    [again] = feed.read()
    assert again.record.result.status == "succeeded"


def test_a_follower_started_on_a_job_without_failures_reads_from_its_newest_outcome(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a job with 4 successes recorded, and a follower's first poll (no failure yet)
    tasks = _job(engine, settings, clients)
    engine.store.record([Outcome(result_for(tasks[s])) for s in range(4)])
    counting = CountingClient(engine.store.ddb)
    engine.store.ddb = counting
    follower = FailureFollower(engine.store, "feed", overlap_s=0)
    assert follower.poll(engine.store.get_job("feed")) == []
    # THEN it read one index item (the newest), not the job's history
    assert [a["Count"] for _, a in _index_queries(counting)] == [1]
    # WHEN a successful outcome comes, THEN a poll does not query at all (no fail counter moved)
    engine.store.record([Outcome(result_for(tasks[4]))])
    before = counting.counts["query"]
    assert follower.poll(engine.store.get_job("feed")) == []
    assert counting.counts["query"] == before
    # WHEN a failure comes, THEN the next poll returns it alone, once
    engine.store.record([Outcome(result_for(tasks[5], status="failed"))])
    [failed] = follower.poll(engine.store.get_job("feed"))
    assert failed.result.shard_id == 5 and failed.result.error == "CUDA out of memory"
    assert follower.poll(engine.store.get_job("feed")) == []


def test_a_failure_the_index_never_showed_is_settled_by_one_full_read(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a follower that has seen the job, and a failure counted on the job whose item carries a
    # stamp far older than the overlap reaches (as if it became readable minutes late)
    tasks = _job(engine, settings, clients)
    engine.store.record([Outcome(result_for(tasks[0]))])
    follower = FailureFollower(engine.store, "feed")
    follower.poll(engine.store.get_job("feed"))
    engine.store.record([Outcome(result_for(tasks[1], status="failed"))])
    key = Outcome(result_for(tasks[1])).key()
    clients["dynamodb"].update_item(
        TableName=settings.job_table,
        Key=key,
        UpdateExpression="SET recorded_at = :old",
        ExpressionAttributeValues={":old": {"S": _stamp(600)}},
    )
    # WHEN the follower polls; THEN the index alone misses it, and a full read after a few polls
    # returns it, once
    job = engine.store.get_job("feed")
    seen = [follower.poll(job) for _ in range(PENDING_POLLS + 2)]
    assert [len(s) for s in seen] == [0] * PENDING_POLLS + [1, 0]
    assert seen[PENDING_POLLS][0].result.shard_id == 1


def test_job_outcomes_read_in_full_once_then_only_the_index(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN the dashboard's view of a job with 3 outcomes
    tasks = _job(engine, settings, clients)
    engine.store.record([Outcome(result_for(tasks[s])) for s in range(3)])
    outcomes = JobOutcomes(engine.store, "feed")
    assert len(outcomes.rows(engine.store.get_job("feed"))) == 3
    counting = CountingClient(engine.store.ddb)
    engine.store.ddb = counting
    # WHEN 2 more are recorded (one late, kept apart) and it refreshes
    engine.store.record([Outcome(result_for(tasks[s])) for s in (3, 4)])
    rows = outcomes.rows(engine.store.get_job("feed"))
    # THEN it holds the 5 in shard order, and read them from the index alone
    assert [r.result.shard_id for r in rows] == [0, 1, 2, 3, 4]
    assert [kw.get("IndexName") for name, kw, _ in counting.calls if name == "query"] == ["by_recorded"]


def test_a_table_without_the_index_is_read_as_before(engine: Engine, clients: dict[str, Any]) -> None:
    # GIVEN a table made from a template without the by_recorded index (a stack deployed before it)
    old = copy.deepcopy(stack_template())
    [props] = [r["Properties"] for r in old["Resources"].values() if r["Type"] == "AWS::DynamoDB::Table"]
    props["GlobalSecondaryIndexes"] = [
        g for g in props["GlobalSecondaryIndexes"] if g["IndexName"] != "by_recorded"
    ]
    props["AttributeDefinitions"] = [
        a for a in props["AttributeDefinitions"] if a["AttributeName"] != "recorded_at"
    ]
    settings = provision(clients["sqs"], clients["dynamodb"], clients["s3"], template=old)
    legacy = Engine(
        settings=settings,
        ddb=clients["dynamodb"],
        sqs=clients["sqs"],
        s3=clients["s3"],
        events=clients["events"],
    )
    tasks = _job(legacy, settings, clients)
    legacy.store.record([Outcome(result_for(tasks[0], status="failed"))])
    # WHEN a follower and the dashboard's view read it, THEN they fall back to the full reads
    follower = FailureFollower(legacy.store, "feed")
    assert [r.result.shard_id for r in follower.poll(legacy.store.get_job("feed"))] == [0]
    assert not follower.indexed
    legacy.store.record([Outcome(result_for(tasks[1], status="failed"))])
    assert [r.result.shard_id for r in follower.poll(legacy.store.get_job("feed"))] == [1]
    outcomes = JobOutcomes(legacy.store, "feed")
    job = legacy.store.get_job("feed")
    outcomes.rows(job)
    assert len(outcomes.rows(job)) == 2 and not outcomes.indexed


def test_an_idle_jobs_last_outcomes_are_not_read_again_once_the_overlap_has_passed(
    make_engine: Callable[..., Engine], settings: Settings, clients: dict[str, Any], clock: Clock
) -> None:
    # GIVEN a feed that read a job's 3 outcomes (stamped, and read, on the engine's clock)
    engine = make_engine(clock=clock)
    tasks = _job(engine, settings, clients)
    engine.store.record([Outcome(result_for(tasks[s])) for s in range(3)])
    feed = OutcomeFeed(engine.store, "feed")
    assert len(feed.read()) == 3
    counting = CountingClient(engine.store.ddb)
    engine.store.ddb = counting
    # WHEN the reader's clock is past the overlap and the skew allowed (nothing new recorded)
    clock.advance(OVERLAP_S + SKEW_S + 1)
    assert feed.read() == []
    assert feed.read() == []
    # THEN the last read reached back to no stored outcome at all
    assert [answer["Count"] for _, answer in _index_queries(counting)][-1] == 0
