"""The dashboard's data access against the local cloud: real jobs, real workers, real tables."""

from __future__ import annotations

from typing import Any

import pytest

from shardq.core.engine import Engine
from shardq.core.jobstore import JobNotFound
from tests.dashboard.conftest import DATA_PARALLEL, NEEDS, SWEEP, aggregate, run_job, workers
from tests.helpers import CountingClient

pytest.importorskip("starlette", reason=NEEDS)
pytestmark = pytest.mark.local_cloud


def test_a_finished_fedavg_job_shows_its_rounds_curves_and_timeline(engine: Engine, data: Any) -> None:
    # GIVEN a data_parallel job of 4 shards x 3 rounds trained to the end by two real workers
    job = run_job(engine, DATA_PARALLEL)
    assert job.status == "SUCCEEDED"
    # WHEN the dashboard reads it
    detail = data.job("dash-fedavg")
    # THEN the curves are the stored round summaries, and validation loss falls
    summaries = engine.store.round_summaries("dash-fedavg")
    assert [r["round"] for r in detail["rounds"]] == [0, 1, 2]
    assert not any(r["partial"] for r in detail["rounds"])
    assert [r["metrics"]["val_loss"]["mean"] for r in detail["rounds"]] == [
        s["metrics"]["val_loss"]["mean"] for s in summaries
    ]
    assert detail["metric_names"] == ["loss", "val_loss"]
    val = [r["metrics"]["val_loss"]["mean"] for r in detail["rounds"]]
    assert val[2] < val[0]
    # AND every recorded outcome is one timeline bar: 12 train tasks and 3 reduces
    entries = detail["timeline"]["entries"]
    rows = engine.store.all_results("dash-fedavg")
    assert len(entries) == len(rows) == 15
    by_key = {(r.result.round, r.result.task_type, r.result.shard_id): r for r in rows}
    assert sorted((e["round"], e["task_type"], e["shard_id"]) for e in entries) == sorted(by_key)
    for e in entries:
        row = by_key[(e["round"], e["task_type"], e["shard_id"])]
        assert e["duration_s"] == row.result.duration_s and e["metrics"] == row.result.metrics
        assert e["recorded_at"] == row.recorded_at
        assert e["end_s"] - e["start_s"] == pytest.approx(e["duration_s"], abs=0.002)
        assert e["end_s"] >= 0 and e["worker_id"] == row.result.worker_id
    assert set(detail["timeline"]["workers"]) <= {"worker-0", "worker-1"}
    assert detail["timeline"]["truncated"] == 0
    # AND progress is complete, nothing failed, no leaderboard for this kind
    assert detail["job"]["progress_pct"] == 100.0
    assert detail["job"]["tasks_completed"] == detail["job"]["tasks_total"] == 15
    expected = [(r, phase, 4 if phase == "train" else 1) for r in range(3) for phase in ("train", "reduce")]
    assert [(p["round"], p["phase"], p["done"]) for p in detail["progress"]] == expected
    assert detail["failures"] == [] and detail["leaderboard"] is None


def test_a_sweep_shows_its_leaderboard_and_the_failed_trial_with_its_error(engine: Engine, data: Any) -> None:
    # GIVEN a sweep of 6 trials whose trial 2 fails on every attempt (within max_failed_shards=1)
    job = run_job(engine, SWEEP)
    assert job.status == "SUCCEEDED"
    # WHEN the dashboard reads it
    detail = data.job("dash-sweep")
    # THEN the leaderboard ranks the 5 trials that finished by val_loss, lowest first
    board = detail["leaderboard"]
    assert board["objective"] == {"metric": "val_loss", "direction": "minimize"} and board["trials"] == 6
    objectives = [r["objective"] for r in board["rows"]]
    assert [r["rank"] for r in board["rows"]] == [1, 2, 3, 4, 5]
    assert objectives == sorted(objectives) and 2 not in [r["trial"] for r in board["rows"]]
    assert board["rows"][0]["hyperparameters"].keys() == {"lr", "epochs"}
    # AND the failure carries the worker's error text, after the queue's retries
    [failure] = detail["failures"]
    assert (failure["round"], failure["shard_id"], failure["source"]) == (0, 2, "worker")
    assert "RuntimeError: shard 2 of round 0 hit a NaN loss" in failure["error"]
    assert failure["attempt"] == engine.settings.max_receive_count
    failed_bar = next(e for e in detail["timeline"]["entries"] if e["status"] == "failed")
    assert failed_bar["retried"] and failed_bar["shard_id"] == 2
    assert detail["job"]["failed"] == 1


def test_a_running_round_shows_the_shards_recorded_so_far(engine: Engine, data: Any) -> None:
    # GIVEN a data_parallel job with 2 of its 4 round-0 shards trained and recorded
    engine.submit(DATA_PARALLEL)
    for w in workers(engine):
        w.poll_once()
    assert aggregate(engine) == 2
    # WHEN the dashboard reads it
    detail = data.job("dash-fedavg")
    # THEN round 0 is a partial point over those 2 shards, and progress says 2 of 4
    [partial] = detail["rounds"]
    assert partial["partial"] and partial["round"] == 0 and partial["shards_succeeded"] == 2
    assert partial["metrics"]["val_loss"]["count"] == 2
    assert detail["progress"][0]["done"] == 2 and detail["progress"][0]["total"] == 4
    assert len(detail["timeline"]["entries"]) == 2
    assert detail["job"]["status"] == "RUNNING" and detail["job"]["tasks_completed"] == 2


def test_cached_results_are_reread_exactly_when_the_job_changes(engine: Engine, data: Any) -> None:
    # GIVEN the dashboard's store counting its DynamoDB calls, over a running job
    counting = CountingClient(data.store.ddb)
    data.store.ddb = counting
    engine.submit(DATA_PARALLEL)
    data.job("dash-fedavg")
    queries = counting.counts["query"]
    # WHEN nothing changed, THEN a second read asks only for the job record
    data.job("dash-fedavg")
    assert counting.counts["query"] == queries
    # WHEN a result is recorded, THEN the next read sees it
    workers(engine, 1)[0].poll_once()
    aggregate(engine)
    assert len(data.job("dash-fedavg")["timeline"]["entries"]) == 1
    assert counting.counts["query"] > queries


def test_a_refresh_reads_only_the_outcomes_recorded_since_the_last_one(engine: Engine, data: Any) -> None:
    # GIVEN a FedAvg job in round 2 (round 1 and its reduce recorded), read once by the dashboard
    engine.submit(DATA_PARALLEL)
    crew = workers(engine)
    while engine.store.get_job("dash-fedavg").round == 0:
        for w in crew:
            w.poll_once()
        aggregate(engine)
    first = data.job("dash-fedavg")
    counting = CountingClient(data.store.ddb)
    data.store.ddb = counting
    # WHEN one result of round 2 is recorded and the page is read again
    crew[0].poll_once()
    assert aggregate(engine) == 1
    detail = data.job("dash-fedavg")
    # THEN one query read the by_recorded index from the newest outcome seen (less the overlap):
    # not the round, not the round summaries (no round closed); and nothing is lost
    [(_, query, _)] = [c for c in counting.calls if c[0] == "query"]
    assert query["IndexName"] == "by_recorded" and "recorded_at >= :since" in query["KeyConditionExpression"]
    assert len(detail["timeline"]["entries"]) == len(first["timeline"]["entries"]) + 1 == 6
    assert [r["round"] for r in detail["rounds"]] == [0, 1] and detail["rounds"][1]["partial"]


def test_job_list_is_newest_first_and_filters_by_status_and_kind(engine: Engine, data: Any) -> None:
    # GIVEN a finished sweep and a running data_parallel job submitted after it
    run_job(engine, SWEEP)
    engine.submit(DATA_PARALLEL)
    # WHEN the list is read with and without filters
    everything = data.jobs()
    running = data.jobs(status="RUNNING")
    sweeps = data.jobs(kind="sweep")
    # THEN it holds both, newest first, with the CLI's JobView fields and progress
    assert [j["job_id"] for j in everything] == ["dash-fedavg", "dash-sweep"]
    assert [j["job_id"] for j in running] == ["dash-fedavg"]
    assert [j["job_id"] for j in sweeps] == ["dash-sweep"]
    assert data.jobs(status="FAILED") == []
    sweep = everything[1]
    assert sweep["status"] == "SUCCEEDED" and sweep["progress_pct"] == 100.0 and sweep["failed"] == 1
    assert everything[0]["progress_pct"] == 0.0 and everything[0]["tasks_total"] == 3 * 5
    assert all(j["age_s"] >= 0 for j in everything)


def test_queue_depths_name_each_queue_and_flag_dead_letters(engine: Engine, data: Any) -> None:
    # GIVEN one message on the results DLQ
    engine.sqs.send_message(QueueUrl=data.queues["results-dlq"], MessageBody='{"poison": true}')
    # WHEN the depths are read
    depths = {q["queue"]: q for q in data.queue_depths()}
    # THEN all four queues are there and the DLQ holds the message
    assert set(depths) == {"tasks", "tasks-dlq", "results", "results-dlq"}
    assert depths["results-dlq"]["visible"] == 1 and depths["results-dlq"]["dead_letter"]
    assert depths["tasks"]["visible"] == 0 and not depths["tasks"]["dead_letter"]


def test_unknown_job_raises_and_a_running_job_has_no_manifest(engine: Engine, data: Any) -> None:
    with pytest.raises(JobNotFound):
        data.job("no-such-job")
    engine.submit(DATA_PARALLEL)
    assert data.manifest("dash-fedavg") is None


def test_manifest_of_a_finished_job_is_the_stored_one(engine: Engine, data: Any) -> None:
    job = run_job(engine, SWEEP)
    manifest = data.manifest("dash-sweep")
    assert manifest is not None and manifest["status"] == job.status == "SUCCEEDED"
    assert manifest["best"]["trial"] == data.job("dash-sweep")["leaderboard"]["rows"][0]["trial"]
