"""Lane depth from the bandwidth-delay product (issue #25 item 1): a window deep enough that no
lane runs dry during a top-up round trip, shrunk toward what keeps a saturated fleet busy.

The measurements come from real outcomes; the windows from a real job table on the local cloud.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace
from typing import Any

from lambdas.aggregator import parse
from shardq.core.admission import Admission
from shardq.core.depth import DEPTH_CAP, Pace, lane_depth
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.messages import ShardResult
from shardq.core.settings import Settings
from shardq.core.tenancy import Scheduling
from tests.helpers import receive_all, result_for, tasks_of

LANES = 4
NOW = 2_000_000_000.0


def result(job_id: str, shard: int, *, worker: str = "w1", duration: float = 0.2) -> ShardResult:
    return ShardResult(
        job_id=job_id,
        round=0,
        shard_id=shard,
        task_type="train",
        status="succeeded",
        num_samples=1,
        duration_s=duration,
        worker_id=worker,
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
    # GIVEN a 200-shard job over 4 lanes: before any measurement, 2 per lane
    engine = make(settings, clients)
    engine.submit(map_job("deep", 200))
    sqs, url = clients["sqs"], settings.task_queue_url
    first = tasks_of(receive_all(sqs, url))
    assert len(first) == 2 * LANES
    # WHEN their results say: one worker hands one in every 0.25 s, each sent 2 s before its count
    outcomes = [Outcome(result_for(t), sent_at=NOW - 2.0 - 0.25 * i) for i, t in enumerate(first)]
    outcomes = [replace(o, result=replace(o.result, worker_id="w1", duration_s=0.1)) for o in outcomes]
    assert not engine.ingest(outcomes)
    assert not engine.ingest(outcomes)  # a redelivered batch: counted once, topped up once
    # THEN each lane keeps 1 running + the round trip's worth queued
    cycle, trip = engine.admission.pace.measured("deep") or (0.0, 0.0)
    assert cycle == 0.25
    depth = 1 + math.ceil(trip / cycle)
    job = engine.store.get_job("deep")
    assert job.enqueued(0, "train") == len(first) + depth * LANES
    # AND the rest of the round still goes out exactly once
    seen = Counter(t.shard_id for t in first)
    while tasks := tasks_of(receive_all(sqs, url)):
        seen.update(t.shard_id for t in tasks)
        engine.ingest([Outcome(result_for(t)) for t in tasks])
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
    # WHEN no backlog is seen (idle workers): the full depth on every lane
    assert admission().window(flood) == depth * LANES
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
