"""Bounded windows (issue #25 item 1): each job keeps a few tasks per lane on the queue and the
aggregator tops the window up from its cursor, exactly once, under duplicates, races and crashes.

On the local cloud (ministack): real FIFO queue, real job table.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from shardq.core.engine import Engine
from shardq.core.fanout import FanOutError
from shardq.core.jobstore import Outcome
from shardq.core.operations import cancel, retry_failed
from shardq.core.settings import Settings
from shardq.core.tenancy import Scheduling, parse
from tests.helpers import FlakySQS, receive_all, result_for, tasks_of
from tests.requests import make_request

LANES = 4
WINDOW = 2 * LANES
# A job's first window with idle workers: one task per lane (``Admission.first_window``).
FIRST = LANES


def windowed(settings: Settings, **config: Any) -> Settings:
    """``settings`` with a ``scheduling`` configuration (windows of 2 per lane by default)."""
    return replace(settings, scheduling=json.dumps({"window_per_lane": 2, **config}))


def make(settings: Settings, clients: dict[str, Any], **options: Any) -> Engine:
    return Engine(
        settings=settings,
        ddb=clients["dynamodb"],
        sqs=options.pop("sqs", clients["sqs"]),
        s3=clients["s3"],
        events=clients["events"],
        **options,
    )


def map_job(job_id: str, shards: int, **fields: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "kind": "map",
        "dataset": {"num_samples": 10 * shards},
        "sharding": {"shard_count": shards},
        "max_parallel": LANES,
        **fields,
    }


def drain(engine: Engine, sqs: Any, url: str, *, status: str = "succeeded") -> list[Any]:
    """Take every queued task, count its result; returns the tasks taken."""
    tasks = tasks_of(receive_all(sqs, url))
    if tasks:
        failed = engine.ingest([Outcome(result_for(t, status=status)) for t in tasks])
        assert not failed, failed
    return tasks


def test_a_round_goes_out_one_window_at_a_time_each_task_exactly_once(
    settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN windows of 2 tasks per lane and a 40-shard job over 4 lanes
    s = windowed(settings)
    engine = make(s, clients)
    engine.submit(map_job("w", 40))
    sqs, url = clients["sqs"], s.task_queue_url
    # WHEN it is submitted THEN only its first window is on the queue: one task per lane
    first = tasks_of(receive_all(sqs, url))
    assert len(first) == FIRST
    assert engine.store.get_job("w").enqueued(0, "train") == FIRST
    # WHEN their results are counted, twice over (a redelivered batch) and by a second aggregator
    outcomes = [Outcome(result_for(t)) for t in first]
    assert not engine.ingest(outcomes)
    assert not engine.ingest(outcomes)
    assert not make(s, clients).ingest(outcomes)
    # THEN the window was topped up once, slow start doubling it to 2 per lane: the next 8 shards
    second = tasks_of(receive_all(sqs, url))
    assert sorted(t.shard_id for t in second) == list(range(FIRST, FIRST + WINDOW))
    seen = Counter(t.shard_id for t in first + second)
    engine.ingest([Outcome(result_for(t)) for t in second])
    while tasks := drain(engine, sqs, url):
        seen.update(t.shard_id for t in tasks)
        assert len(tasks) <= WINDOW
    # THEN every shard went out exactly once and the job finished
    assert seen == Counter(range(40))
    assert engine.store.get_job("w").status == "SUCCEEDED"


def test_a_killed_top_up_resumes_from_the_cursor_without_repeats_or_gaps(
    settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a windowed 60-shard job whose first window ran
    s = windowed(settings)
    engine = make(s, clients)
    engine.submit(map_job("k", 60))
    sqs, url = clients["sqs"], s.task_queue_url
    first = tasks_of(receive_all(sqs, url))
    # WHEN the aggregator that counts them dies mid top-up (its first SendMessageBatch went out)
    dying = make(s, clients, sqs=FlakySQS(sqs, die_after=0), max_in_flight=1)
    outcomes = [Outcome(result_for(t)) for t in first]
    failed = dying.ingest(outcomes)
    # THEN its batch is failed back to the event source, with the results already counted
    assert len(failed) == len(outcomes) and isinstance(failed[0][1], FanOutError | RuntimeError)
    assert engine.store.get_job("k").done(0, "train") == FIRST
    # WHEN the event source redelivers the batch to a healthy aggregator
    assert not engine.ingest(outcomes)
    seen = Counter(t.shard_id for t in first)
    while tasks := drain(engine, sqs, url):
        seen.update(t.shard_id for t in tasks)
    # THEN no shard was skipped or sent twice, and the job finished
    assert seen == Counter(range(60))
    assert engine.store.get_job("k").status == "SUCCEEDED"


def test_a_cancel_with_a_partial_window_sends_nothing_more(
    settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a windowed 40-shard job with its first window out
    s = windowed(settings)
    engine = make(s, clients)
    engine.submit(map_job("c", 40))
    sqs, url = clients["sqs"], s.task_queue_url
    first = tasks_of(receive_all(sqs, url))
    # WHEN it is cancelled, and the running tasks' results arrive after
    assert cancel(engine, "c").cancelled
    engine.ingest([Outcome(result_for(t)) for t in first])
    # THEN no task was sent after the cancel, and the cursor never passed the window
    assert receive_all(sqs, url) == []
    job = engine.store.get_job("c")
    assert job.status == "CANCELLED" and job.enqueued(0, "train") == FIRST


def test_a_retry_with_a_partial_window_finishes_the_round(
    settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a windowed 30-shard job failed by a shard of its first window (no failure budget)
    s = windowed(settings)
    engine = make(s, clients)
    engine.submit(map_job("r", 30))
    sqs, url = clients["sqs"], s.task_queue_url
    first = tasks_of(receive_all(sqs, url))
    outcomes = [Outcome(result_for(t, status="failed" if t.shard_id == 3 else "succeeded")) for t in first]
    engine.ingest(outcomes)
    assert engine.store.get_job("r").status == "FAILED"
    assert engine.store.get_job("r").enqueued(0, "train") < 30
    tasks_of(receive_all(sqs, url))  # what the failed job's workers would drop
    # WHEN the failed shard is retried
    retry_failed(engine, "r")
    seen: Counter[int] = Counter()
    while tasks := drain(engine, sqs, url):
        seen.update(t.shard_id for t in tasks)
    # THEN the retry ran shard 3 again and the window carried the rest of the round to the end
    job = engine.store.get_job("r")
    assert job.status == "SUCCEEDED", job.error
    assert 3 in seen and set(seen) | {t.shard_id for t in first} == set(range(30))


def test_a_small_job_beside_a_flood_is_served_near_the_head(
    settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a 3,000-shard flood submitted first to an idle fleet, then a 4-shard job
    s = windowed(settings)
    engine = make(s, clients)
    engine.submit(map_job("flood", 3000))
    engine.submit(map_job("small", 4))
    # WHEN workers take tasks in the queue's order
    order = [t.job_id for t in tasks_of(receive_all(clients["sqs"], s.task_queue_url))]
    # THEN the small job's tasks sit right behind the flood's first window, not behind its 3,000
    # shards; and that window is one task per lane, what the flood can run at once: a task sent
    # cannot be called back, so nothing more waits in front of the small job before the flood's
    # first results show how many workers it keeps busy (2 per lane queued 4 more here)
    assert order.count("flood") == FIRST == LANES and order.count("small") == 4
    assert max(i for i, job in enumerate(order) if job == "small") < FIRST + 4


def test_without_scheduling_a_round_goes_out_whole(settings: Settings, clients: dict[str, Any]) -> None:
    # GIVEN a stack deployed before windows (no SHARDQ_SCHEDULING)
    engine = make(settings, clients)
    # WHEN a 40-shard job is submitted THEN all its tasks are queued at once, as before
    engine.submit(map_job("whole", 40))
    assert len(receive_all(clients["sqs"], settings.task_queue_url)) == 40
    assert Scheduling().window_per_lane is None and parse({}).window_per_lane == 2


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"window_per_lane": 0}, "window_per_lane must be an integer from 1 to 100"),
        ({"tenants": {"Bad": {}}}, "tenants.Bad: tenant must be lowercase"),
        ({"tenants": {"a": {"weight": 0}}}, "tenants.a.weight must be a number above 0"),
        ({"tenants": {"a": {"quotas": {"gpus": 1}}}}, "tenants.a.quotas.gpus is not a quota"),
        ({"tenants": {"a": {"quotas": {"running_jobs": 3, "running_tasks": 2}}}}, "at least running_jobs"),
        ({"tenants": {"a": {}}}, "default_tenant 'default' is not in tenants (a)"),
        ({"tenants": {"a": {"principals": ["team-a"]}}}, "principals must be a list of IAM principal ARNs"),
        ({"tenants": {"a": {"monthly_budget_usd": -5}}}, "monthly_budget_usd must be a positive number"),
        ({"priority_aging_seconds": 0}, "priority_aging_seconds must be a number from 1 to 86400"),
        ({"fair": True}, "fair is not a setting"),
    ],
)
def test_a_bad_scheduling_config_names_the_key_and_the_fix(config: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValueError, match="scheduling is invalid") as caught:
        parse(config)
    assert expected in str(caught.value)


def test_a_retry_of_a_failed_windowed_job_sends_only_what_was_sent_and_the_window_the_rest(
    settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a 3-shard job on one lane with a window of 1, failed by its first shard (found by
    # the model-based test: the retry sent the shards past the cursor too, outside the window,
    # and the window sent them again later)
    s = windowed(settings, window_per_lane=1)
    engine = make(s, clients)
    engine.submit(map_job("rw", 3, max_parallel=1))
    sqs, url = clients["sqs"], s.task_queue_url
    (first,) = tasks_of(receive_all(sqs, url))
    assert not engine.ingest([Outcome(result_for(first, status="failed"))])
    assert engine.store.get_job("rw").status == "FAILED"
    # WHEN it is retried
    retry_failed(engine, "rw")
    # THEN only the failed shard goes out again; the window sends the others one by one, once each
    sent: list[int] = []
    while tasks := tasks_of(receive_all(sqs, url)):
        assert len(tasks) == 1, [t.shard_id for t in tasks]
        sent += [t.shard_id for t in tasks]
        assert not engine.ingest([Outcome(result_for(t)) for t in tasks])
    assert sent == [0, 1, 2]
    assert engine.store.get_job("rw").status == "SUCCEEDED"


def test_a_new_round_goes_on_from_the_last_rounds_window_not_from_its_reduce(
    settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a windowed 2-round data_parallel job of 16 shards over 4 lanes (found in review: the
    # reduce's send recorded a window of 1, so each later round started at 2 tasks, fewer than
    # one per lane, and slow-started again)
    s = windowed(settings)
    engine = make(s, clients)
    engine.submit(make_request(job_id="nr", shards=16, rounds=2, max_parallel=LANES))
    sqs, url = clients["sqs"], s.task_queue_url
    sends: list[list[tuple[str, int]]] = []
    while tasks := drain(engine, sqs, url):
        sends.append([(t.task_type, t.round) for t in tasks])
    # THEN the reduce sent alone and round 1's first send was as deep as round 0's last window
    firsts = [i for i, b in enumerate(sends) if b[0] == ("train", 1)]
    assert firsts and sends[firsts[0] - 1] == [("reduce", 0)]
    assert len(sends[firsts[0]]) == WINDOW
    assert engine.store.get_job("nr").status == "SUCCEEDED"
