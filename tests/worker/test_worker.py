"""The worker runtime against the local endpoint: outcomes, retries, heartbeats, signals, cancellation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shardq.core import operations
from shardq.core.engine import Engine
from shardq.core.planning import split_s3
from shardq.core.settings import Settings
from shardq.local.cloud import LocalCloud
from shardq.local.resources import provision
from shardq.worker import runtime
from shardq.worker.runtime import Worker
from shardq.worker.supervisor import serve
from tests.helpers import TRUSTED, CountingClient, receive_all

ROOT = Path(__file__).resolve().parents[2]


def job(engine: Engine, shards: int = 3, entrypoint: str = "tests.workloads:ok", **extra: Any) -> None:
    engine.submit(
        {
            "job_id": "w",
            "kind": "map",
            "dataset": {"num_samples": shards * 10},
            "sharding": {"shard_count": shards},
            "entrypoint": entrypoint,
            **extra,
        }
    )


def worker(settings: Settings, clients: dict[str, Any], **kw: Any) -> Worker:
    return Worker(
        allow=TRUSTED,
        sqs=kw.pop("sqs", clients["sqs"]),
        s3=clients["s3"],
        ddb=clients["dynamodb"],
        job_table=settings.job_table,
        task_queue_url=settings.task_queue_url,
        results_queue_url=settings.results_queue_url,
        wait_s=kw.pop("wait_s", 1),
        **kw,
    )


def results(clients: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    return [json.loads(m["Body"]) for m in receive_all(clients["sqs"], settings.results_queue_url)]


def visible_and_in_flight(sqs: Any, url: str) -> tuple[int, int]:
    a = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])


@pytest.fixture
def short(clients: dict[str, Any]) -> Settings:
    """Resources with a 2-second task visibility and maxReceiveCount 2, for timing-driven tests."""
    return provision(
        clients["sqs"], clients["dynamodb"], clients["s3"], max_receive_count=2, task_visibility_s=2
    )


@pytest.fixture
def short_engine(short: Settings, clients: dict[str, Any]) -> Engine:
    return Engine(
        settings=short,
        ddb=clients["dynamodb"],
        sqs=clients["sqs"],
        s3=clients["s3"],
        events=clients["events"],
    )


def test_worker_runs_tasks_uploads_artifacts_and_posts_results(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    job(engine)
    w = worker(settings, clients)
    assert w.run(threading.Event(), max_tasks=3) == 3
    posted = sorted(results(clients, settings), key=lambda r: r["shard_id"])
    assert [(r["shard_id"], r["status"], r["num_samples"]) for r in posted] == [
        (0, "succeeded", 10),
        (1, "succeeded", 10),
        (2, "succeeded", 10),
    ]
    for r in posted:
        bucket, key = split_s3(r["artifact_uri"])
        assert key == f"jobs/w/round-0000/shard-{r['shard_id']:06d}/model.npz"
        clients["s3"].head_object(Bucket=bucket, Key=key)
    assert visible_and_in_flight(clients["sqs"], settings.task_queue_url) == (0, 0)


def test_a_result_reports_the_workers_busy_time_without_the_wait_before_the_task(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a worker long-polling an empty queue for a second before a 0.3 s task arrives
    w = worker(settings, clients, wait_s=5)
    runner = threading.Thread(target=w.run, args=(threading.Event(),), kwargs={"max_tasks": 1})
    runner.start()
    time.sleep(1.0)
    submitted = time.monotonic()
    job(engine, shards=1, entrypoint="tests.workloads:slow", hyperparameters={"sleep": 0.3})
    runner.join(60)
    posted_by = time.monotonic()
    (posted,) = results(clients, settings)
    # THEN its busy time (receive → result send, what the aggregator sizes windows by) covers the
    # task and leaves out the wait: it cannot have started before the task was sent
    assert 0.3 <= posted["duration_s"] <= posted["busy_s"] <= posted_by - submitted


def test_raising_task_is_retried_then_reported_failed_on_last_attempt(
    short_engine: Engine, short: Settings, clients: dict[str, Any]
) -> None:
    job(short_engine, shards=1, entrypoint="tests.workloads:boom")
    w = worker(short, clients)
    assert w.max_receive_count == 2
    # first attempt: released at once, nothing posted
    assert w.poll_once() is True
    assert visible_and_in_flight(clients["sqs"], short.task_queue_url) == (1, 0)
    assert results(clients, short) == []
    # last attempt: a failed result with the traceback, task deleted
    assert w.poll_once() is True
    (failed,) = results(clients, short)
    assert failed["status"] == "failed"
    assert failed["attempt"] == 2
    assert "ValueError: shard 0 is poisoned" in failed["error"]
    assert "Traceback" in failed["error"]
    assert visible_and_in_flight(clients["sqs"], short.task_queue_url) == (0, 0)


def test_heartbeat_keeps_a_long_task_from_redelivery(
    short_engine: Engine, short: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a 5 s task on a queue whose visibility timeout is 2 s
    job(short_engine, shards=1, entrypoint="tests.workloads:slow", hyperparameters={"sleep": 5})
    w = worker(short, clients, visibility_s=2)
    t = threading.Thread(target=w.poll_once)
    t.start()
    _wait_in_flight(clients["sqs"], short.task_queue_url)
    # WHEN another consumer polls all through the run
    stolen = []
    while t.is_alive():
        stolen += (
            clients["sqs"]
            .receive_message(QueueUrl=short.task_queue_url, WaitTimeSeconds=1)
            .get("Messages", [])
        )
    t.join()
    # THEN nobody else got the task and it ran exactly once, on its first attempt
    assert stolen == []
    (done,) = results(clients, short)
    assert (done["status"], done["attempt"]) == ("succeeded", 1)


def test_task_outliving_the_12_hour_ceiling_fails_clearly_once(
    short_engine: Engine, short: Settings, clients: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a ceiling scaled down from 12 h to 3 s (margin 1 s)
    monkeypatch.setattr(runtime, "VISIBILITY_CEILING_S", 3)
    monkeypatch.setattr(runtime, "CEILING_MARGIN_S", 1)
    job(short_engine, shards=1, entrypoint="tests.workloads:slow", hyperparameters={"sleep": 4})
    worker(short, clients, visibility_s=1).poll_once()
    # THEN one failed result names the ceiling and the fix, and the task is gone (no second run)
    (only,) = results(clients, short)
    assert only["status"] == "failed"
    assert "12-hour visibility ceiling" in only["error"]
    assert "sharding.shard_count" in only["error"]
    assert visible_and_in_flight(clients["sqs"], short.task_queue_url) == (0, 0)


def test_cancelled_jobs_task_is_dropped_unrun(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    job(engine, shards=2, entrypoint="tests.workloads:boom")
    assert operations.cancel(engine, "w").cancelled
    w = worker(settings, clients)
    w.poll_once()
    w.poll_once()
    assert results(clients, settings) == []
    assert visible_and_in_flight(clients["sqs"], settings.task_queue_url) == (0, 0)


def test_a_job_being_cancelled_has_its_tasks_dropped_before_it_is_cancelled(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a job an operator asked to cancel, still RUNNING (a big round's close not done yet)
    job(engine, shards=2, entrypoint="tests.workloads:boom")
    assert engine.store.request_cancel("w") and not engine.store.request_cancel("w")
    assert engine.store.get_job("w").status == "RUNNING"
    # THEN a worker drops its queued tasks unrun, as for a CANCELLED job
    w = worker(settings, clients)
    w.poll_once()
    w.poll_once()
    assert results(clients, settings) == []
    assert visible_and_in_flight(clients["sqs"], settings.task_queue_url) == (0, 0)


def test_idle_worker_long_polls_instead_of_spinning(settings: Settings, clients: dict[str, Any]) -> None:
    # GIVEN an idle worker with a 2 s long poll, stopped by its own idle exit after 4 s of empty polls
    counting = CountingClient(clients["sqs"])
    w = worker(settings, clients, sqs=counting, wait_s=2)
    assert serve([w], idle_exit_s=4) == 0
    # THEN it made a handful of receives in those seconds, not a spin (at 20 s, the default: 3 a minute)
    assert 2 <= counting.counts["receive_message"] <= 4
    assert Worker.__dataclass_fields__["wait_s"].default == 20


def test_default_reduce_averages_shard_models_by_num_samples(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    engine.submit(
        {
            "job_id": "dp",
            "kind": "data_parallel",
            "dataset": {"num_samples": 30},
            "sharding": {"shard_count": 2},
            "entrypoint": "tests.workloads:ok",
        }
    )
    from shardq.core.contracts import ShardResult
    from shardq.core.jobstore import Outcome

    w = worker(settings, clients)
    w.run(threading.Event(), max_tasks=2)
    engine.ingest([Outcome(ShardResult.from_json(r)) for r in results(clients, settings)])
    w.run(threading.Event(), max_tasks=3)  # the reduce task
    (reduced,) = results(clients, settings)
    assert reduced["task_type"] == "reduce"
    bucket, key = split_s3(reduced["artifact_uri"])
    path = Path(
        clients["s3"].download_file(bucket, key, "/tmp/shardq-reduced.npz") or "/tmp/shardq-reduced.npz"
    )
    with np.load(path) as m:
        # shards 0 and 1 hold 15 samples each, weights w = 0 and 1: the average is 0.5
        assert np.allclose(m["w"], 0.5)
        assert float(m["b"]) == pytest.approx(1.0)


def _spawn_worker(cloud: LocalCloud, settings: Settings, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, **cloud.env(), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shardq.cli",
            "worker",
            "--task-queue-url",
            settings.task_queue_url,
            "--results-queue-url",
            settings.results_queue_url,
            "--job-table",
            settings.job_table,
            "--concurrency",
            "1",
            "--wait-seconds",
            "1",
            "--allow",
            "tests.*",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_in_flight(sqs: Any, url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if visible_and_in_flight(sqs, url) == (0, 1):
            return
        time.sleep(0.2)
    raise AssertionError("the worker never picked the task up")


def test_sigterm_mid_task_gives_the_task_back_at_once_and_exits_0(
    cloud: LocalCloud, engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a worker process 1 s into a 60 s task (the queue's visibility timeout is 300 s)
    job(engine, shards=1, entrypoint="tests.workloads:slow", hyperparameters={"sleep": 60})
    proc = _spawn_worker(cloud, settings, "--grace-seconds", "1")
    _wait_in_flight(clients["sqs"], settings.task_queue_url)
    # WHEN a spot interruption's SIGTERM arrives
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    # THEN it exits 0 and the task is visible again at once, not after 300 s: re-sent (its first
    # receive, ``releases`` 1), so the interruption cost no receive toward the DLQ
    assert code == 0, proc.stderr.read() if proc.stderr else ""
    msgs = (
        clients["sqs"]
        .receive_message(
            QueueUrl=settings.task_queue_url, AttributeNames=["ApproximateReceiveCount"], WaitTimeSeconds=2
        )
        .get("Messages", [])
    )
    assert len(msgs) == 1
    assert msgs[0]["Attributes"]["ApproximateReceiveCount"] == "1"
    assert json.loads(msgs[0]["Body"])["releases"] == 1
    assert results(clients, settings) == []


def test_sigkill_mid_task_hands_the_task_to_another_worker_after_the_timeout(
    cloud: LocalCloud, short_engine: Engine, short: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a worker process SIGKILLed mid-task (no chance to release it)
    job(short_engine, shards=1, entrypoint="tests.workloads:slow", hyperparameters={"sleep": 60})
    proc = _spawn_worker(cloud, short)
    _wait_in_flight(clients["sqs"], short.task_queue_url)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    # WHEN another worker polls once the 2 s visibility timeout has passed
    w = worker(short, clients, entrypoint="tests.workloads:ok", wait_s=5)
    assert w.poll_once() is True
    # THEN it runs the shard (second attempt) and posts the only result
    (done,) = results(clients, short)
    assert (done["status"], done["attempt"]) == ("succeeded", 2)


@pytest.mark.parametrize(
    ("entrypoint", "reason"),
    [
        ("tests.no_such_module:train", "ModuleNotFoundError: No module named 'tests.no_such_module'"),
        ("tests.workloads:no_such_function", "has no function 'no_such_function'"),
    ],
)
def test_broken_entrypoint_fails_at_once_without_a_redelivery_loop(
    engine: Engine, settings: Settings, clients: dict[str, Any], entrypoint: str, reason: str
) -> None:
    # GIVEN a job whose entrypoint cannot be loaded on this worker
    job(engine, shards=2, entrypoint=entrypoint)
    counting = CountingClient(clients["sqs"])
    w = worker(settings, clients, sqs=counting)
    # WHEN the worker takes its tasks
    w.run(threading.Event(), max_tasks=2)
    # THEN each is reported failed on its first attempt, with the reason and the fix, and deleted:
    # no task went back to the queue for another doomed attempt
    posted = results(clients, settings)
    assert [(r["status"], r["attempt"]) for r in posted] == [("failed", 1), ("failed", 1)]
    assert all(reason in r["error"] for r in posted)
    assert all("fix the" in r["error"].lower() for r in posted)
    assert counting.counts.get("change_message_visibility", 0) == 0
    assert visible_and_in_flight(clients["sqs"], settings.task_queue_url) == (0, 0)
