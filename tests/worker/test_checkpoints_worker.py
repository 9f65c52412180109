"""The checkpoint contract through real workers on the local cloud: a stopped attempt (SIGTERM, a
Spot notice from a fake IMDSv2) saves, gives the task back and exits 0; the next worker resumes from
its checkpoint, and the result says where it started and which attempts came before."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from shardq.cli.result import render_manifest
from shardq.core import checkpoint_keys
from shardq.core.engine import Engine
from shardq.core.planning import split_s3
from shardq.core.settings import Settings
from shardq.dashboard.data import timeline_entry
from shardq.local.cloud import LocalCloud
from shardq.worker.runtime import Worker
from tests.finished import aggregate
from tests.helpers import TRUSTED, receive_all
from tests.worker.fake_imds import FakeImds

ROOT = Path(__file__).resolve().parents[2]
COUNTING = "tests.worker.ckpt_workloads:counting"


def submit(engine: Engine, job_id: str, steps: int, pause: float, **extra: Any) -> None:
    engine.submit(
        {
            "job_id": job_id,
            "kind": "map",
            "dataset": {"num_samples": 10},
            "sharding": {"shard_count": 1},
            "entrypoint": COUNTING,
            "hyperparameters": {"steps": steps, "pause": pause},
            **extra,
        }
    )


def pointer_step(s3: Any, bucket: str, job_id: str, shard: int = 0) -> int | None:
    key = checkpoint_keys.task_prefix(job_id, 0, "train", shard, 0) + "latest.json"
    try:
        return int(json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())["step"])
    except s3.exceptions.NoSuchKey:
        return None


def wait_for_step(s3: Any, bucket: str, job_id: str, step: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (pointer_step(s3, bucket, job_id) or 0) >= step:
            return
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint at step {step} within {timeout} s")


def in_process_worker(settings: Settings, clients: dict[str, Any], **kw: Any) -> Worker:
    return Worker(
        allow=TRUSTED,
        sqs=clients["sqs"],
        s3=clients["s3"],
        ddb=clients["dynamodb"],
        job_table=settings.job_table,
        task_queue_url=settings.task_queue_url,
        results_queue_url=settings.results_queue_url,
        wait_s=5,
        **kw,
    )


def spawn(cloud: LocalCloud, settings: Settings, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, **cloud.env(), "PYTHONPATH": str(ROOT)}
    args = ["--task-queue-url", settings.task_queue_url, "--results-queue-url", settings.results_queue_url,
            "--job-table", settings.job_table, "--concurrency", "1", "--wait-seconds", "1",
            "--allow", "tests.*", "--log-format", "text", *extra]  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "shardq.cli", "worker", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def results(clients: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    return [json.loads(m["Body"]) for m in receive_all(clients["sqs"], settings.results_queue_url)]


@pytest.mark.parametrize("how", ["sigterm", "spot notice"])
def test_a_stopped_worker_checkpoints_releases_and_the_next_one_resumes(
    how: str, cloud: LocalCloud, engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a worker process three checkpoints into a 40-step task
    job_id = "stop-" + how.replace(" ", "-")
    submit(engine, job_id, steps=40, pause=0.25)
    with FakeImds() as imds:
        proc = spawn(cloud, settings, "--spot-notice", "on", "--imds-endpoint", imds.endpoint,
                     "--grace-seconds", "60")  # fmt: skip
        try:
            wait_for_step(clients["s3"], settings.artifact_bucket, job_id, 3)
            # WHEN it is told to stop: SIGTERM, or EC2's two-minute Spot notice
            if how == "sigterm":
                proc.send_signal(signal.SIGTERM)
            else:
                imds.interrupt()
            output, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    # THEN it exits 0 well inside the grace period, having posted no result
    assert proc.returncode == 0, output
    assert "stopped" in output and "released to the queue" in output
    saved = pointer_step(clients["s3"], settings.artifact_bucket, job_id)
    assert saved is not None and 3 <= saved < 40
    assert results(clients, settings) == []
    # AND the next worker receives the task at once (not after a lease) and resumes from that step
    nxt = in_process_worker(settings, clients)
    assert nxt.poll_once() is True
    (result,) = results(clients, settings)
    assert result["status"] == "succeeded", result.get("error")
    assert (result["attempt"], result["resume_step"]) == (2, saved)
    assert result["metrics"]["started_at"] == saved
    (first,) = result["attempts"]
    assert (first["attempt"], first["resume_step"], first["last_step"]) == (1, None, saved)


def test_an_isolated_task_gets_the_contract_over_its_pipe(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a task with a time limit: its function runs in a child process
    submit(engine, "isolated", steps=30, pause=0.2, task_timeout_seconds=120)
    first = in_process_worker(settings, clients)
    stopper = threading.Thread(
        target=lambda: (
            wait_for_step(clients["s3"], settings.artifact_bucket, "isolated", 2),
            first.stop_signal.request("test"),
        )
    )
    stopper.start()
    # WHEN the worker's stop is set mid-task
    assert first.poll_once() is True
    stopper.join()
    # THEN the child saved, stopped, and the task went back; the next attempt resumes in its child
    assert results(clients, settings) == []
    saved = pointer_step(clients["s3"], settings.artifact_bucket, "isolated")
    assert saved is not None and saved >= 2
    assert in_process_worker(settings, clients).poll_once() is True
    (result,) = results(clients, settings)
    assert (result["status"], result["resume_step"]) == ("succeeded", saved), result.get("error")
    assert result["metrics"]["started_at"] == saved


def test_a_resumed_task_shows_its_attempts_in_the_result_the_manifest_and_the_dashboard(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a task stopped after its 2nd checkpoint and finished by a second worker
    submit(engine, "shown", steps=12, pause=0.1)
    first = in_process_worker(settings, clients, worker_id="first")
    stopper = threading.Thread(
        target=lambda: (
            wait_for_step(clients["s3"], settings.artifact_bucket, "shown", 2),
            first.stop_signal.request("test"),
        )
    )
    stopper.start()
    assert first.poll_once() is True
    stopper.join()
    saved = pointer_step(clients["s3"], settings.artifact_bucket, "shown")
    assert in_process_worker(settings, clients, worker_id="second").poll_once() is True
    # WHEN the aggregator records it and the job finishes
    assert aggregate(engine) == 1
    job = engine.store.get_job("shown")
    assert job.status == "SUCCEEDED" and job.result_uri
    bucket, key = split_s3(job.result_uri)
    manifest = json.loads(clients["s3"].get_object(Bucket=bucket, Key=key)["Body"].read())
    # THEN the manifest, `shardq result` and the dashboard's timeline say attempt 2 resumed from the step
    (output,) = manifest["outputs"]
    assert (output["attempt"], output["resume_step"]) == (2, saved)
    assert f"2, from step {saved}" in render_manifest(manifest, io.StringIO())
    (row,) = engine.store.results("shown", 0)
    entry = timeline_entry(row, 0.0)
    assert (entry["attempt"], entry["resume_step"]) == (2, saved)
    assert entry["earlier_attempts"] == [
        {"attempt": 1, "worker_id": "first", "resume_step": None, "last_step": saved}
    ]
