"""A big map round closes in ranges: each range digested once, in any order, anywhere; nothing lost.

On the local cloud with the range size lowered to 5 shards, so a 23-shard map job closes in 5
ranges (5 + 5 + 5 + 5 + 3). What must hold: the manifest and the round summary put together
from the ranges equal the ones a single pass over every result gives; a range run twice counts
once; ranges handed to other invocations finish the job when the last one is stored, whatever
their order; a range that never runs is handed out again by the close's watchdog tick.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from lambdas.splitter import split
from shardq.core import finalize
from shardq.core.advance import CLOSE_RANGE_LEASE_S, CloseRangeIncomplete, lambda_range_dispatch
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.metrics import summarize_round
from shardq.core.operations import cancel, retry_failed
from shardq.core.rounds import Tick
from shardq.core.settings import Settings
from tests.core.test_manifest_parts import FAILED, SHARDS, read_manifest, read_parts, report_map_job
from tests.helpers import Clock, receive_all, result_for, tasks_of
from tests.requests import make_request

RANGE = 5
RANGES = 5  # ceil(23 / 5)


def close(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> bool:
    """Per-metric figures equal to rounding (range sums are added in another order)."""
    return a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-12) for k in a)


@pytest.fixture
def ranged(make_engine: Callable[..., Engine]) -> Callable[..., Engine]:
    """Engines over this test's resources whose big rounds close in ranges of ``RANGE`` shards."""

    def make(**options: Any) -> Engine:
        engine = make_engine(**options)
        engine.advancer.range_shards = RANGE
        return engine

    return make


def test_ranges_give_the_manifest_and_summary_of_one_pass(
    ranged: Callable[..., Engine],
    settings: Settings,
    clients: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN ranges of 5 shards run inline, and 4 entries of each list inline in the manifest
    monkeypatch.setattr(finalize, "INLINE_MAX", 4)
    engine = ranged()
    # WHEN a 23-shard map job with 4 failed shards finishes
    results = report_map_job(engine, settings, clients["sqs"], "ranged")
    job = engine.store.get_job("ranged")
    assert job.status == "SUCCEEDED"
    ranged = read_manifest(clients["s3"], settings, "ranged")
    # THEN each range was digested once
    digests = engine.store.close_parts("ranged", 0)
    assert [d["range"] for d in digests] == list(range(RANGES)) and job.ranges_done(0) == RANGES
    assert [(d["first_shard"], d["last_shard"]) for d in digests][-1] == (20, 22)
    # AND the manifest equals the one a single pass writes, but for where the parts are
    single = engine.finisher.manifest(job, "SUCCEEDED", None)
    for name in ("outputs", "failed"):
        assert read_parts(clients["s3"], ranged[f"{name}_parts"]) == read_parts(
            clients["s3"], single[f"{name}_parts"]
        )
        assert len(ranged[f"{name}_parts"]) == (RANGES if name == "outputs" else 3)  # failures: 3 ranges
        assert ranged[f"{name}_count"] == single[f"{name}_count"]
        assert ranged[name] == json.loads(json.dumps(single[name])) and len(ranged[name]) == 4
    ok = sorted(s for s in range(SHARDS) if s not in FAILED)
    assert [o["shard_id"] for o in ranged["outputs"]] == ok[:4]
    assert close(ranged["metrics"], single["metrics"])
    plain = {"outputs", "failed", "outputs_parts", "failed_parts", "metrics", "rounds"}
    assert {k: v for k, v in ranged.items() if k not in plain} == json.loads(
        json.dumps({k: v for k, v in single.items() if k not in plain})
    )
    # AND the round summary equals the one-pass summary (sums merged per range: equal to rounding)
    summary = ranged["rounds"][0]
    expected = summarize_round(0, sorted(results, key=lambda r: r.shard_id), job.round_started_at)
    assert {k: v for k, v in summary.items() if k != "metrics"} == {
        k: v for k, v in expected.items() if k != "metrics"
    }
    assert close(summary["metrics"], expected["metrics"])
    assert summary["shards_succeeded"] == 19 and summary["failed_shards"] == sorted(FAILED)


def test_ranges_run_elsewhere_in_any_order_and_the_last_one_finishes(
    ranged: Callable[..., Engine], settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN ranges handed to "other invocations" (collected here, run below)
    handed: list[tuple[str, int, list[int]]] = []
    engine = ranged(dispatch_ranges=lambda j, r, ks: handed.append((j, r, ks)))
    # WHEN every result is in
    report_map_job(engine, settings, clients["sqs"], "elsewhere")
    # THEN the round is frozen and its ranges are out, once, and the job waits for them
    job = engine.store.get_job("elsewhere")
    assert handed == [("elsewhere", 0, list(range(RANGES)))]
    assert (job.status, job.closed_round, job.ranges_done(0)) == ("RUNNING", 0, 0)
    assert engine.advance("elsewhere") == "RUNNING" and len(handed) == 1  # no second hand-out
    # WHEN they run in a shuffled order, one of them twice (a redelivered invocation)
    order = list(range(RANGES))
    random.Random(7).shuffle(order)
    statuses = [engine.close_range("elsewhere", 0, k) for k in [*order[:2], order[0], *order[2:]]]
    # THEN the job finishes with the last range, and each range counted once
    assert statuses == ["RUNNING"] * RANGES + ["SUCCEEDED"]
    job = engine.store.get_job("elsewhere")
    assert job.ranges_done(0) == RANGES and len(engine.store.close_parts("elsewhere", 0)) == RANGES
    manifest = read_manifest(clients["s3"], settings, "elsewhere")
    assert manifest["outputs_count"] == SHARDS - len(FAILED) and manifest["failed_count"] == len(FAILED)
    assert engine.close_range("elsewhere", 0, 1) == "SUCCEEDED"  # a late duplicate changes nothing
    assert engine.store.get_job("elsewhere").ranges_done(0) == RANGES


def test_a_lost_range_is_handed_out_again_by_the_watchdog(
    ranged: Callable[..., Engine], settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a hand-out that loses range 2 (its invocation failed for good) and runs the rest
    clock = Clock(1_900_000_000.0)
    handed: list[list[int]] = []

    def dispatch(job_id: str, round_no: int, indexes: list[int]) -> None:
        handed.append(indexes)
        for k in indexes:
            if k != 2 or len(handed) > 1:
                engine.close_range(job_id, round_no, k)

    engine = ranged(dispatch_ranges=dispatch, clock=clock)
    report_map_job(engine, settings, clients["sqs"], "lost")
    assert engine.status("lost").status == "RUNNING" and handed == [list(range(RANGES))]
    # THEN the close armed its watchdog: a tick on the results queue, delayed by the lease
    attrs = clients["sqs"].get_queue_attributes(
        QueueUrl=settings.results_queue_url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )["Attributes"]
    assert int(attrs["ApproximateNumberOfMessagesDelayed"]) == 1
    # WHEN the tick comes back before the lease is out, nothing is handed out again
    engine.ingest([Tick("lost", 0, clock.now + CLOSE_RANGE_LEASE_S)])
    assert handed == [list(range(RANGES))]
    # WHEN it comes back after the lease
    clock.now += CLOSE_RANGE_LEASE_S + 1
    engine.ingest([Tick("lost", 0, clock.now)])
    # THEN only the missing range is handed out, and the job finishes with it
    assert handed == [list(range(RANGES)), [2]]
    assert engine.status("lost").status == "SUCCEEDED"
    assert engine.store.get_job("lost").ranges_done(0) == RANGES


def test_the_splitter_runs_a_range_and_rejects_a_malformed_one(
    ranged: Callable[..., Engine],
    lambda_env: Settings,
    clients: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a job whose close ranges were handed out as the Lambdas and the CLI hand them out: one
    # asynchronous splitter invocation each (their events kept here, the splitter run below)
    from lambdas import common

    class AsyncInvokes:
        def __init__(self) -> None:
            self.events: list[dict[str, Any]] = []

        def invoke(self, *, FunctionName: str, InvocationType: str, Payload: bytes) -> None:
            assert (FunctionName, InvocationType) == ("the-splitter", "Event")
            self.events.append(json.loads(Payload))

    lam = AsyncInvokes()
    engine = ranged(dispatch_ranges=lambda_range_dispatch(lam, "the-splitter"))
    report_map_job(engine, lambda_env, clients["sqs"], "viasplit")
    monkeypatch.setattr(common.engine(), "advancer", engine.advancer)
    # WHEN the splitter gets each range's event
    answers = [split(event, None) for event in lam.events]
    # THEN each answer names its range, and the last one finished the job
    assert [a["range"] for a in answers] == list(range(RANGES)) and all(a["ok"] for a in answers)
    assert answers[-1]["status"] == "SUCCEEDED"
    # AND a malformed event is refused with the field named, changing nothing
    bad = split({"shardq_close": {"job_id": "viasplit", "round": -1, "range": "x"}}, None)
    assert bad["ok"] is False and "shardq_close.round and .range" in bad["message"]


def test_a_big_map_job_over_its_failure_budget_fails_through_its_ranges(
    ranged: Callable[..., Engine], settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN ranges of 5 shards and a job that tolerates 1 failed shard
    engine = ranged()
    engine.submit(make_request("map", job_id="overbudget", shards=SHARDS, max_failed_shards=1))
    tasks = sorted(tasks_of(receive_all(clients["sqs"], settings.task_queue_url)), key=lambda t: t.shard_id)
    results = [result_for(t, status="failed" if t.shard_id in FAILED else "succeeded") for t in tasks]
    # WHEN the first 10 shards report (3 failures: over budget), then the rest
    engine.ingest([Outcome(r) for r in results[:10]])
    engine.ingest([Outcome(r) for r in results[10:]])
    # THEN the job FAILED with the count and the first failure's words, its round frozen at the
    # first 10 (the rest recorded as late, never counted), and its manifest put together from ranges
    job = engine.store.get_job("overbudget")
    assert job.status == "FAILED" and job.closed_round == 0
    assert job.error == (
        "3 shards failed, over max_failed_shards=1; first: round 1 shard 2: CUDA out of memory"
    )
    assert len(engine.store.late_results("overbudget")) == SHARDS - 10
    m = read_manifest(clients["s3"], settings, "overbudget")
    assert (m["status"], m["error"], m["failed_count"], m["outputs_count"]) == ("FAILED", job.error, 3, 7)
    assert [f["shard_id"] for f in read_parts(clients["s3"], m["failed_parts"])] == [2, 7, 8]
    assert len(engine.store.close_parts("overbudget", 0)) == RANGES
    assert m["rounds"][0]["shards_failed"] == 3 and m["rounds"][0]["shards_succeeded"] == 7
    # WHEN the operator retries it: the round opens again, its failed and late shards run
    report = retry_failed(engine, "overbudget")
    assert report.retried == [2, 7, 8, *range(10, SHARDS)]
    job = engine.store.get_job("overbudget")
    assert (job.status, job.closed_round, job.ranges_done(0)) == ("RUNNING", None, 0)
    assert engine.store.close_parts("overbudget", 0) == []
    again = tasks_of(receive_all(clients["sqs"], settings.task_queue_url))
    engine.ingest([Outcome(result_for(t)) for t in again])
    # THEN it closes in ranges anew and succeeds, every shard listed once
    assert engine.status("overbudget").status == "SUCCEEDED"
    m = read_manifest(clients["s3"], settings, "overbudget")
    outputs = read_parts(clients["s3"], m["outputs_parts"])
    assert [o["shard_id"] for o in outputs] == list(range(SHARDS)) and m["failed_count"] == 0


def test_a_big_map_job_cancelled_mid_run_stops_its_workers_and_closes_through_its_ranges(
    ranged: Callable[..., Engine], settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a 23-shard map job in ranges of 5 whose first 12 shards reported, ranges handed to
    # "other invocations" (collected here, run below)
    handed: list[int] = []
    engine = ranged(dispatch_ranges=lambda j, r, ks: handed.extend(ks))
    engine.submit(make_request("map", job_id="stop", shards=SHARDS))
    tasks = sorted(tasks_of(receive_all(clients["sqs"], settings.task_queue_url)), key=lambda t: t.shard_id)
    engine.ingest([Outcome(result_for(t)) for t in tasks[:12]])
    # WHEN an operator cancels it
    report = cancel(engine, "stop")
    # THEN workers see it cancelling at once, its round is frozen and its 5 ranges are out; the
    # job is not CANCELLED before its manifest can be put together
    assert (report.cancelled, report.status, report.closing_ranges) == (True, "RUNNING", RANGES)
    state = engine.store.state_of("stop")
    assert state is not None and state.cancelling and state.closed_round == 0
    assert engine.status("stop").cancel_requested_at is not None  # `shardq status` shows it
    assert handed == list(range(RANGES))
    # AND a result that arrives now is late, never counted
    engine.ingest([Outcome(result_for(tasks[12]))])
    assert [r.result.shard_id for r in engine.store.late_results("stop")] == [12]
    # WHEN the ranges run: the last one ends the job CANCELLED, its manifest listing the 12
    assert [engine.close_range("stop", 0, k) for k in handed] == ["RUNNING"] * (RANGES - 1) + ["CANCELLED"]
    job = engine.store.get_job("stop")
    assert (job.status, job.error) == ("CANCELLED", "cancelled by an operator (shardq cancel)")
    m = read_manifest(clients["s3"], settings, "stop")
    assert m["status"] == "CANCELLED" and m["outputs_count"] == 12
    assert [o["shard_id"] for o in read_parts(clients["s3"], m["outputs_parts"])] == list(range(12))
    # AND a second cancel changes nothing
    again = cancel(engine, "stop")
    assert (again.cancelled, again.status, again.closing_ranges) == (False, "CANCELLED", 0)


def test_the_last_range_stored_while_another_call_holds_the_claim_still_finishes_the_job(
    ranged: Callable[..., Engine], settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN ranges handed out, all but the last stored
    handed: list[int] = []
    engine = ranged(dispatch_ranges=lambda j, r, ks: handed.extend(ks))
    report_map_job(engine, settings, clients["sqs"], "race")
    for k in handed[:-1]:
        engine.close_range("race", 0, k)
    # AND another call (a redelivered batch) that read the job and then took the close claim
    stale = engine.store.get_job("race")
    now = engine.clock()
    assert engine.store.claim_close("race", 0, now, now + 60)
    # WHEN the last range is stored meanwhile: its own advance cannot take the claim
    assert engine.close_range("race", 0, handed[-1]) == "RUNNING"
    # THEN the claim holder, deciding on what it read before, gives the claim back and looks again
    assert engine.advancer._close_in_ranges(stale, ("SUCCEEDED", None)) is True
    assert engine.advance("race") == "SUCCEEDED"


def test_a_range_near_its_deadline_checkpoints_and_the_next_invocation_resumes(
    ranged: Callable[..., Engine],
    settings: Settings,
    clients: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN ranges handed out, and invocations whose deadline is already near (they may stop
    # after every 2 rows read)
    monkeypatch.setattr(finalize, "STOP_CHECK_ROWS", 2)
    handed: list[int] = []
    engine = ranged(dispatch_ranges=lambda j, r, ks: handed.extend(ks))
    report_map_job(engine, settings, clients["sqs"], "slow")
    near = engine.clock() + 1.0
    # WHEN range 0 (shards 0-4) runs: it stops after 2 rows, then after 2 more, then finishes
    stops = 0
    while True:
        try:
            engine.close_range("slow", 0, 0, deadline=near)
            break
        except CloseRangeIncomplete as exc:
            stops += 1
            assert (exc.job_id, exc.round, exc.index) == ("slow", 0, 0)
            assert engine.store.close_checkpoint("slow", 0, 0)["next_shard"] == 2 * stops
    # THEN it checkpointed twice and stored one digest covering all 5 shards, its parts named by
    # the shards they hold, no shard twice
    assert stops == 2 and engine.store.get_job("slow").ranges_done(0) == 1
    (digest,) = engine.store.close_parts("slow", 0)
    assert digest["round"]["succeeded"] + digest["round"]["failed"] == 5
    assert [p["uri"].rsplit("/", 1)[1] for p in digest["outputs"]["parts"]] == [
        "outputs-000000-000001.jsonl",
        "outputs-000003-000003.jsonl",
        "outputs-000004-000004.jsonl",
    ]  # shard 2 failed
    assert [f["shard_id"] for f in read_parts(clients["s3"], digest["failed"]["parts"])] == [2]
    # WHEN a duplicate invocation resumes from a checkpoint another one already moved past
    assert engine.store.close_checkpoint("slow", 0, 1) is None
    with pytest.raises(CloseRangeIncomplete):
        engine.close_range("slow", 0, 1, deadline=near)  # checkpoint 1 at shard 7
    stale = engine.store.close_checkpoint("slow", 0, 1)
    with pytest.raises(CloseRangeIncomplete):
        engine.close_range("slow", 0, 1, deadline=near)  # checkpoint 2 at shard 9
    assert engine.store.put_close_checkpoint("slow", 0, 1, stale, stale["seq"] - 1) is False
    # THEN its checkpoint is refused; the rest finish the job with every shard listed once
    for k in handed:
        engine.close_range("slow", 0, k)
    assert engine.advance("slow") == "SUCCEEDED"
    m = read_manifest(clients["s3"], settings, "slow")
    ok = [s for s in range(SHARDS) if s not in FAILED]
    assert [o["shard_id"] for o in read_parts(clients["s3"], m["outputs_parts"])] == ok
    assert [f["shard_id"] for f in read_parts(clients["s3"], m["failed_parts"])] == sorted(FAILED)
