"""Lane depth from the bandwidth-delay product (issue #25 item 1): a window deep enough that no
lane runs dry during a top-up round trip, shrunk toward what keeps a saturated fleet busy.

The measurements come from real outcomes; the windows from a real job table on the local cloud.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest

from lambdas.aggregator import parse
from shardq.core.admission import IDLE_RECHECK_S, SNAPSHOT_TTL_S, Admission
from shardq.core.contracts import ValidationError
from shardq.core.depth import DEPTH_CAP, Pace, lane_depth
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.messages import ShardResult
from shardq.core.settings import Settings
from shardq.core.tenancy import Scheduling
from tests.helpers import receive_all, result_for, tasks_of

LANES = 4
NOW = 2_000_000_000.0


def result(
    job_id: str, shard: int, *, worker: str = "w1", duration: float = 0.2, busy: float | None = None
) -> ShardResult:
    return ShardResult(
        job_id=job_id,
        round=0,
        shard_id=shard,
        task_type="train",
        status="succeeded",
        num_samples=1,
        duration_s=duration,
        worker_id=worker,
        busy_s=busy,
    )


def test_a_lane_holds_one_running_plus_a_round_trip_of_tasks() -> None:
    # a 2 s round trip of 0.5 s tasks: 1 running + 4 queued
    assert lane_depth(0.5, 2.0, floor=2) == 5
    # a round trip shorter than a task: the floor (2) still keeps one queued
    assert lane_depth(5.0, 1.0, floor=2) == 2
    # no-op tasks and a slow round trip: the cap, never more
    assert lane_depth(0.0, 10.0, floor=2) == DEPTH_CAP
    # nonsense (a broken clock) is no measurement
    assert lane_depth(math.nan, 1.0, floor=3) == 3
    assert lane_depth(0.5, math.inf, floor=3) == 3


def test_pace_takes_a_busy_workers_cycle_and_the_mean_round_trip() -> None:
    pace = Pace()
    # GIVEN worker w1 handing in results every 0.5 s (0.4 s of work each), and a starved worker
    # w2 whose one long gap must not count, all counted at NOW
    outcomes = [Outcome(result("j", i, duration=0.4), sent_at=NOW - 2.0 + 0.5 * i) for i in range(3)] + [
        Outcome(result("j", 10, worker="w2", duration=0.4), sent_at=NOW - 9.0),
        Outcome(result("j", 11, worker="w2", duration=0.4), sent_at=NOW - 1.5),
        # a DLQ outcome and one without a send stamp measure nothing
        Outcome(result("j", 12), source="dlq", sent_at=NOW - 100.0),
        Outcome(result("j", 13)),
    ]
    pace.observe(outcomes, NOW)
    cycle, trip = pace.measured("j") or (0.0, 0.0)
    assert cycle == 0.5
    assert trip == (2.0 + 1.5 + 1.0 + 9.0 + 1.5) / 5
    assert pace.depth("j", floor=2) == 1 + math.ceil(trip / 0.5)
    # AND a job never measured gets the floor
    assert pace.depth("other", floor=2) == 2


def starved(job_id: str, *, busy: float | None) -> list[Outcome]:
    """A starved lane's results: each worker handed one in every 3 s (it waited 2.8 s of each for
    its lane's next task), each task 0.1 s of work and 0.2 s busy in all, sent 2 s before its count."""
    return [
        Outcome(
            result(job_id, 3 * i + w, worker=f"w{w}", duration=0.1, busy=busy), sent_at=NOW - 2.0 - 3.0 * i
        )
        for w in range(3)
        for i in range(3)
    ]


def test_a_starved_lane_is_measured_by_its_busy_time_and_deepens() -> None:
    # GIVEN the same starved results, from workers that report busy_s and from older ones
    pace = Pace()
    pace.observe(starved("new", busy=0.2), NOW)
    pace.observe(starved("old", busy=None), NOW)
    # THEN with idle workers the busy time is the cycle; without it, the gaps, wait included (3 s)
    assert pace.measured("new") == pytest.approx((0.2, (2.0 + 5.0 + 8.0) / 3))
    assert pace.measured("old") == pytest.approx((3.0, (2.0 + 5.0 + 8.0) / 3))
    # AND the starved job deepens to 1 + 5 s / 0.2 s: 26 per lane; the gaps kept it at 3
    assert pace.depth("new", floor=2) == 26
    assert pace.depth("old", floor=2) == 3
    # AND on a saturated fleet (workers find work at once) the gaps are the cycle, for both
    assert pace.measured("new", saturated=True) == pytest.approx((3.0, 5.0))
    assert pace.depth("new", floor=2, saturated=True) == pace.depth("old", floor=2, saturated=True) == 3
    # AND a busy time under the task's own duration (a clock step) is never believed
    pace.observe([Outcome(result("odd", 0, duration=0.5, busy=0.1), sent_at=NOW - 1.0)], NOW)
    assert pace.measured("odd") == pytest.approx((0.5, 1.0))


def test_a_result_carries_its_busy_time_optionally_and_a_bad_one_is_named() -> None:
    timed = result("j", 0, busy=0.25)
    assert ShardResult.from_json(timed.to_json()) == timed
    assert "busy_s" not in result("j", 0).to_dict()  # an older worker's body, as it was
    assert ShardResult.from_json(result("j", 0).to_json()).busy_s is None
    for bad in (-1, float("nan"), "0.2", True):
        body = {**timed.to_dict(), "busy_s": bad}
        with pytest.raises(ValidationError, match="busy_s must be a finite number of seconds >= 0 or null"):
            ShardResult.from_json(json.dumps(body))


def test_the_aggregator_reads_when_a_result_was_sent() -> None:
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

    body = result("j", 0).to_json()
    stamped = parse(
        SQSRecord({"messageId": "m", "body": body, "attributes": {"SentTimestamp": "1700000000250"}})
    )
    assert isinstance(stamped, Outcome) and stamped.sent_at == 1_700_000_000.25
    bare = parse(SQSRecord({"messageId": "m", "body": body}))
    assert isinstance(bare, Outcome) and bare.sent_at is None


def make(settings: Settings, clients: dict[str, Any], **options: Any) -> Engine:
    return Engine(
        settings=replace(settings, scheduling=json.dumps({"window_per_lane": 2})),
        ddb=clients["dynamodb"],
        sqs=clients["sqs"],
        s3=clients["s3"],
        events=clients["events"],
        clock=lambda: NOW,
        **options,
    )


def map_job(job_id: str, shards: int) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "kind": "map",
        "dataset": {"num_samples": 10 * shards},
        "sharding": {"shard_count": shards},
        "max_parallel": LANES,
    }


def test_a_measured_round_trip_deepens_the_window_and_every_shard_still_goes_once(
    settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a 200-shard job over 4 lanes: before any measurement, its first window, 1 per lane
    engine = make(settings, clients)
    engine.submit(map_job("deep", 200))
    sqs, url = clients["sqs"], settings.task_queue_url
    first = tasks_of(receive_all(sqs, url))
    assert len(first) == LANES
    # WHEN their results say: one worker hands one in every 0.25 s, each sent 2 s before its count
    outcomes = [Outcome(result_for(t), sent_at=NOW - 2.0 - 0.25 * i) for i, t in enumerate(first)]
    outcomes = [replace(o, result=replace(o.result, worker_id="w1", duration_s=0.1)) for o in outcomes]
    assert not engine.ingest(outcomes)
    assert not engine.ingest(outcomes)  # a redelivered batch: counted once, topped up once
    # THEN each lane's depth is 1 running + the round trip's worth queued
    cycle, trip = engine.admission.pace.measured("deep") or (0.0, 0.0)
    assert cycle == 0.25
    depth = 1 + math.ceil(trip / cycle)
    # AND with idle workers the window grows toward it by slow start: double the last per top-up
    job = engine.store.get_job("deep")
    assert job.enqueued(0, "train") == len(first) + 2 * len(first)
    windows = [job.window]
    # AND the rest of the round still goes out exactly once, the window doubling up to the depth
    seen = Counter(t.shard_id for t in first)
    while tasks := tasks_of(receive_all(sqs, url)):
        seen.update(t.shard_id for t in tasks)
        engine.ingest([Outcome(result_for(t)) for t in tasks])
        windows.append(engine.store.get_job("deep").window)
    assert depth > 8
    assert windows[:4] == [2 * LANES, 4 * LANES, 8 * LANES, depth * LANES]
    assert seen == Counter(range(200))
    assert engine.store.get_job("deep").status == "SUCCEEDED"


def test_a_saturated_fleet_keeps_only_what_its_busy_workers_need_queued(
    settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a big job measured at 9 per lane (a 2 s round trip of 0.25 s tasks)
    engine = make(settings, clients)
    engine.submit(map_job("flood", 400))
    engine.admission.pace.observe(
        [Outcome(result("flood", i, duration=0.1), sent_at=NOW - 2.0 - 0.25 * i) for i in range(2)], NOW
    )
    depth = engine.admission.pace.depth("flood", floor=2)
    assert depth == 1 + math.ceil((2.0 + 2.25) / 2 / 0.25)
    fleet = {"backlog": 0, "busy": 2}

    def admission() -> Admission:
        return Admission(
            engine.store,
            Scheduling.from_env({"SHARDQ_SCHEDULING": json.dumps({"window_per_lane": 2})}),
            lambda: NOW,
            backlog=lambda: fleet["backlog"],
            in_flight=lambda: fleet["busy"],
            pace=engine.admission.pace,
        )

    flood = engine.store.get_job("flood")
    # WHEN no backlog is seen (idle workers): the full depth on every lane (once slow start got
    # there: its last window already that deep)
    assert admission().window(replace(flood, window=depth * LANES)) == depth * LANES
    # WHEN a backlog is seen and 2 workers are busy, the flood alone: 2 lanes' worth
    fleet["backlog"] = 50
    assert admission().window(flood) == depth * 2
    # WHEN a 4-shard job joins: the flood's share shrinks to what 2 workers need beside it
    engine.submit(map_job("small", 4))
    gate = admission()
    assert gate.window(flood) == math.ceil(depth * LANES * 2 / (LANES + 4))
    assert gate.window(engine.store.get_job("small")) == 2  # the floor, unmeasured
    # AND a fleet of unknown size (nothing in flight) keeps its share of the full depth (its
    # tenant's two jobs split it, as before depths)
    fleet["busy"] = 0
    assert admission().window(flood) == depth * LANES // 2


def test_a_starved_job_deepens_through_the_engine_and_every_shard_still_goes_once(
    settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a 300-shard job whose first window's results came in starved: each of 3 workers
    # handed one in every 3 s, 0.2 s busy with each
    engine = make(settings, clients)
    engine.submit(map_job("starved", 300))
    sqs, url = clients["sqs"], settings.task_queue_url
    first = tasks_of(receive_all(sqs, url))
    assert len(first) == LANES
    outcomes = [
        Outcome(
            replace(result_for(t), worker_id=f"w{i % 3}", duration_s=0.1, busy_s=0.2),
            sent_at=NOW - 2.0 - 3.0 * (i // 3),
        )
        for i, t in enumerate(first)
    ]
    # WHEN the aggregator counts them (twice: a redelivered batch)
    assert not engine.ingest(outcomes)
    assert not engine.ingest(outcomes)
    # THEN the cycle is the busy time, not the 3 s gaps, and each lane holds a round trip of it
    cycle, trip = engine.admission.pace.measured("starved") or (0.0, 0.0)
    assert cycle == pytest.approx(0.2)
    depth = 1 + math.ceil(trip / cycle)
    assert depth > 10  # the gaps would have given 1 + ceil(trip / 3) = 2
    job = engine.store.get_job("starved")
    assert job.enqueued(0, "train") == len(first) + 2 * len(first)  # slow start: doubled
    windows = [job.window]
    # AND the rest of the round goes out exactly once, the window doubling up to that depth
    seen = Counter(t.shard_id for t in first)
    while tasks := tasks_of(receive_all(sqs, url)):
        seen.update(t.shard_id for t in tasks)
        engine.ingest([Outcome(result_for(t)) for t in tasks])
        windows.append(engine.store.get_job("starved").window)
    assert windows[:4] == [2 * LANES, 4 * LANES, 8 * LANES, depth * LANES]
    assert seen == Counter(range(300))
    assert engine.store.get_job("starved").status == "SUCCEEDED"


def measured_flood(engine: Engine) -> None:
    """A 400-shard flood whose 3 workers each handed in results 0.5 s apart (0.125 s of it busy
    with the task, the rest the receive and the delete), sent 2 s before their count."""
    engine.submit(map_job("flood", 400))
    engine.admission.pace.observe(
        [
            Outcome(
                result("flood", 2 * w + k, worker=f"w{w}", duration=0.0625, busy=0.125),
                sent_at=NOW - 2.25 + 0.5 * k,
            )
            for w in range(3)
            for k in range(2)
        ],
        NOW,
    )


def test_a_saturated_fleet_queues_one_round_trip_of_its_busy_workers_cycles(
    settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a flood whose 3 workers each handed in results 0.5 s apart (0.125 s of it busy with
    # the task, the rest the receive and the delete), sent 2 s before their count
    engine = make(settings, clients)
    measured_flood(engine)
    trip = (engine.admission.pace.measured("flood") or (0.0, 0.0))[1]
    idle_depth = 1 + math.ceil(trip / 0.125)  # with idle workers: the busy time, deep
    busy_depth = 1 + math.ceil(trip / 0.5)  # on a saturated fleet: the whole cycle
    assert (trip, idle_depth, busy_depth) == (2.0, 17, 5)
    fleet = {"backlog": 0}
    now = [NOW]
    reads = iter([3, 0, 1, 1, 1])

    def admission() -> Admission:
        return Admission(
            engine.store,
            Scheduling.from_env({"SHARDQ_SCHEDULING": json.dumps({"window_per_lane": 2})}),
            lambda: now[0],
            backlog=lambda: fleet["backlog"],
            in_flight=lambda: next(reads),
            pace=engine.admission.pace,
        )

    flood = engine.store.get_job("flood")
    # WHEN no backlog is seen (idle workers): every lane at the busy time's depth (once slow
    # start got there: its last window already that deep)
    gate = admission()
    assert gate.window(replace(flood, window=idle_depth * LANES)) == idle_depth * LANES
    # WHEN a backlog is seen with 3 tasks in flight: each busy worker 1 running + one round trip of
    # its whole cycles queued, so what is queued drains in about one round trip
    fleet["backlog"] = 50
    gate = admission()
    assert gate.window(flood) == busy_depth * 3
    # WHEN a read 5 s later catches the workers between tasks (0 in flight), then 1: still 3 busy
    # workers (a lone low read neither unshrinks the windows to the full depth nor starves them)
    now[0] += 5.0
    assert gate.window(flood) == busy_depth * 3
    now[0] += 5.0
    assert gate.window(flood) == busy_depth * 3
    # WHEN the fleet shrank (a minute of reads of 1): the windows follow it down
    now[0] += 55.0
    assert gate.window(flood) == busy_depth * 1
    now[0] += 5.0
    assert gate.window(flood) == busy_depth * 1


def test_an_idle_fleet_is_looked_at_again_soon_so_a_backlog_stops_slow_start_at_once(
    settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a flood measured as in the test above (idle depth 17 per lane, 5 on a saturated
    # fleet), its first window of 4 (one per lane) sent and none of it counted yet
    engine = make(settings, clients)
    measured_flood(engine)
    now, fleet, reads = [NOW], {"backlog": 0}, []

    def backlog() -> int:
        reads.append(now[0])
        return fleet["backlog"]

    gate = Admission(
        engine.store,
        Scheduling.from_env({"SHARDQ_SCHEDULING": json.dumps({"window_per_lane": 2})}),
        lambda: now[0],
        backlog=backlog,
        in_flight=lambda: 3,
        pace=engine.admission.pace,
    )
    flood = engine.store.get_job("flood")
    # WHEN no backlog is seen: slow start holds it to its last window, nothing counted since
    assert gate.window(flood) == LANES
    # AND its counted results let it grow by as many: 4 counted, 8 (not the 68 of its depth)
    counted = replace(flood, counters=MappingProxyType({**flood.counters, ("ok", 0, "train"): LANES}))
    assert gate.window(counted) == 2 * LANES
    # WHEN a backlog shows: it is seen within IDLE_RECHECK_S (not SNAPSHOT_TTL_S), and from then
    # the windows hold what the 3 busy workers need for a round trip, whatever slow start allowed
    fleet["backlog"] = 30
    now[0] += IDLE_RECHECK_S / 2
    assert gate.window(counted) == 2 * LANES
    now[0] += IDLE_RECHECK_S / 2
    assert gate.window(counted) == 5 * 3
    # AND a saturated fleet is read again only every SNAPSHOT_TTL_S (the hold covers the rest)
    fleet["backlog"] = 0
    now[0] += SNAPSHOT_TTL_S / 2
    assert gate.window(counted) == 5 * 3
    assert reads == [NOW, NOW + IDLE_RECHECK_S]
