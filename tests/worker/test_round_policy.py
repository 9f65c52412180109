"""The worker's side of a round's policy, on the local cloud: the per-task time limit, train tasks of
a closed round dropped unrun, and FedProx's proximal term handed to the training function."""

from __future__ import annotations

import io
import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.planning import split_s3
from shardq.core.settings import Settings
from tests.helpers import count_messages
from tests.worker.test_models import npz, posted, worker


def children() -> list[int]:
    """This process's live task processes (Linux: each thread's ``children`` in /proc; the local
    cloud's server is a child too, so only ``shardq.worker.isolation`` command lines count)."""
    pids = [int(pid) for f in Path("/proc/self/task").glob("*/children") for pid in f.read_text().split()]
    return [pid for pid in pids if b"shardq.worker.isolation" in _cmdline(pid)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # exited meanwhile
        return b""


def submit(engine: Engine, job_id: str, entrypoint: str, shards: int = 1, **extra: Any) -> None:
    engine.submit(
        {
            "job_id": job_id,
            "kind": "data_parallel",
            "dataset": {"num_samples": 15 * shards},
            "sharding": {"shard_count": shards},
            "max_parallel": shards,
            "entrypoint": entrypoint,
            **extra,
        }
    )


# -- the per-task time limit --------------------------------------------------------------------


def test_a_task_past_its_time_limit_is_stopped_reported_failed_and_deleted_and_the_slot_goes_on(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a task that would sleep 60 s, with a 2 s limit
    submit(engine, "late", "tests.workloads:slow", hyperparameters={"sleep": 60}, task_timeout_seconds=2)
    w = worker(settings, clients)
    # WHEN the worker runs it
    assert w.run(threading.Event(), max_tasks=1) == 1
    # THEN its process was stopped, and it is reported failed on its first attempt, naming the limit
    assert children() == []
    (failed,) = posted(clients, settings)
    assert (failed.status, failed.attempt) == ("failed", 1)
    assert "TaskTimeout" in (failed.error or "") and "task_timeout_seconds=2" in (failed.error or "")
    # AND the task is gone from the queue (not retried, no lease held)
    assert count_messages(clients["sqs"], settings.task_queue_url) == 0
    # AND it counts against max_failed_shards (0 here): the job fails saying why
    assert engine.ingest([Outcome(failed)]) == []
    job = engine.store.get_job("late")
    assert job.status == "FAILED"
    assert (job.error or "").startswith("1 shards failed, over max_failed_shards=0; first: round 1 shard 0: ")
    assert "task_timeout_seconds=2" in (job.error or "")
    # AND the same slot runs the next task, isolated too, to success: its model chosen in the child
    submit(engine, "next", "tests.worker.workloads:explicit_model", task_timeout_seconds=60)
    assert w.run(threading.Event(), max_tasks=2) == 2
    (ok,) = posted(clients, settings)
    assert ok.status == "succeeded", ok.error
    assert (ok.model_uri or "").endswith("shard-000000/weights.npz")
    assert ok.num_samples == 15 and ok.metrics == {"loss": 1.0}


def test_an_error_in_the_isolated_function_is_reported_with_its_own_type(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    submit(engine, "boom", "tests.workloads:boom", task_timeout_seconds=60)
    w = worker(settings, clients)
    w.max_receive_count = 1  # its last attempt: report it
    w.run(threading.Event(), max_tasks=1)
    (failed,) = posted(clients, settings)
    assert failed.status == "failed"
    assert "ValueError: shard 0 is poisoned" in (failed.error or "")
    assert "TaskTimeout" not in (failed.error or "")


def test_a_shutdown_stops_the_isolated_task_and_gives_it_back(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a worker running a long task under a time limit (so in a child process)
    submit(engine, "shut", "tests.workloads:slow", hyperparameters={"sleep": 60}, task_timeout_seconds=600)
    w = worker(settings, clients)
    slot = threading.Thread(target=w.run, args=(threading.Event(),), kwargs={"max_tasks": 1})
    slot.start()
    for _ in range(1200):  # until its child process started (bounded: a broken start fails the test)
        if children():
            break
        threading.Event().wait(0.05)
    assert children()
    # WHEN the worker shuts down and releases it
    assert w.release_current()
    slot.join()
    # THEN its process is stopped, nothing is posted, and the task is back in the queue for another
    assert children() == []
    assert posted(clients, settings) == []
    assert count_messages(clients["sqs"], settings.task_queue_url) == 1


def test_an_isolated_function_fetches_its_files_logs_and_reports_through_the_worker(
    engine: Engine, settings: Settings, clients: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a map task over two S3 files, under a time limit (so in a child process)
    for name, body in (("a.txt", b"abc"), ("b.txt", b"hello")):
        clients["s3"].put_object(Bucket=settings.artifact_bucket, Key=f"data/{name}", Body=body)
    files = [f"s3://{settings.artifact_bucket}/data/{n}" for n in ("a.txt", "b.txt")]
    engine.submit(
        {
            "job_id": "files",
            "kind": "map",
            "dataset": {"files": files},
            "sharding": {"shard_count": 1},
            "entrypoint": "tests.worker.workloads:read_files",
            "task_timeout_seconds": 60,
        }
    )
    # WHEN the worker runs it
    with caplog.at_level(logging.INFO, logger="shardq.worker"):
        worker(settings, clients).run(threading.Event(), max_tasks=1)
    # THEN the child's fetches were served by the worker, and its outcome and outputs came back
    (done,) = posted(clients, settings)
    assert done.status == "succeeded", done.error
    assert (done.metrics, done.num_samples) == ({"bytes": 8.0}, 2)
    bucket, key = split_s3(done.artifact_uri or "")
    assert json.loads(clients["s3"].get_object(Bucket=bucket, Key=key)["Body"].read()) == [3, 5]
    # AND its log line and progress reached the worker's log, with the task's identity
    lines = [r for r in caplog.records if r.getMessage() == "read 2 files, 8 bytes"]
    assert [getattr(r, "job_id", None) for r in lines] == ["files"]
    assert any(r.getMessage() == "progress 100%" for r in caplog.records)


# -- tasks of a closed round ------------------------------------------------------------------


def test_train_tasks_of_a_round_closed_by_quorum_are_dropped_unrun(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN 4 shards and a 50 % quorum
    submit(engine, "q", "tests.workloads:ok", shards=4, quorum={"fraction": 0.5})
    w = worker(settings, clients)
    # WHEN 2 shards train and report, the round closes
    w.run(threading.Event(), max_tasks=2)
    first = posted(clients, settings)
    assert engine.ingest([Outcome(r) for r in first]) == []
    job = engine.store.get_job("q")
    assert (job.closed_round, job.phase) == (0, "reduce")
    # THEN the worker deletes the other 2 train tasks unrun, and runs the reduce
    w.run(threading.Event(), max_tasks=5)
    (reduced,) = posted(clients, settings)
    assert (reduced.task_type, reduced.status) == ("reduce", "succeeded")
    assert count_messages(clients["sqs"], settings.task_queue_url) == 0
    assert engine.store.late_results("q") == []  # nothing ran late: nothing was trained for nothing
    assert engine.ingest([Outcome(reduced)]) == []
    assert engine.store.get_job("q").status == "SUCCEEDED"


# -- FedProx ------------------------------------------------------------------------------------


def test_fedprox_mu_keeps_the_local_model_near_the_global_one(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a global model at zero and the linear example, trained with FedAvg and with FedProx
    buf = io.BytesIO()
    np.savez(buf, w=np.zeros(4), b=np.array(0.0))
    clients["s3"].put_object(Bucket=settings.artifact_bucket, Key="init/model.npz", Body=buf.getvalue())
    init = f"s3://{settings.artifact_bucket}/init/model.npz"
    distances = {}
    for job_id, strategy in (("plain", {"name": "fedavg"}), ("prox", {"name": "fedprox", "mu": 5.0})):
        engine.submit(
            {
                "job_id": job_id,
                "kind": "data_parallel",
                "dataset": {"uri": "synthetic://linear?dim=4&seed=3", "num_samples": 512},
                "sharding": {"shard_count": 1},
                "entrypoint": "examples.linear:train",
                "hyperparameters": {"lr": 0.05, "epochs": 2},
                "model": {"init_uri": init},
                "strategy": strategy,
            }
        )
        worker(settings, clients).run(threading.Event(), max_tasks=1)
        (trained,) = posted(clients, settings)
        assert trained.status == "succeeded", trained.error
        model = npz(clients["s3"], trained.model_uri or "")
        distances[job_id] = float(np.sqrt(np.sum(model["w"] ** 2) + float(model["b"]) ** 2))
    # THEN the proximal term pulled the local model toward the global one (zero)
    assert distances["plain"] > 0.5
    assert distances["prox"] < 0.5 * distances["plain"]
