"""AWS errors against the worker: transient ones never end a slot, fatal ones end the worker non-zero.

Faults are injected at the botocore level (tests/chaos/faults.py: a ``before-send`` handler on the
real clients); every other call reaches the local cloud.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shardq.core.contracts import ShardResult
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.settings import Settings
from shardq.local.cloud import LocalCloud, free_port
from shardq.local.resources import provision
from shardq.worker.aws import Backoff, worker_client
from shardq.worker.runtime import Worker
from shardq.worker.supervisor import EXIT_FATAL, EXIT_OK, EXIT_SLOT_DIED, serve
from tests.chaos.faults import WORKER_OPERATIONS, FaultInjector
from tests.helpers import TRUSTED, receive_all

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def aws_env(cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch) -> LocalCloud:
    """Credentials, region and endpoint in the environment, as a worker host has them."""
    for key, value in cloud.env().items():
        monkeypatch.setenv(key, value)
    return cloud


def faulty_worker(
    settings: Settings, injector: FaultInjector | None, *, endpoint: str | None = None, **kw: Any
) -> Worker:
    """A worker whose clients retry as ``shardq worker``'s do (2 attempts here) with faults attached."""

    def client(service: str) -> Any:
        c = worker_client(service, endpoint_url=endpoint, max_attempts=2)
        return injector.attach(c) if injector else c

    return Worker(
        allow=TRUSTED,
        sqs=client("sqs"),
        s3=client("s3"),
        ddb=client("dynamodb"),
        job_table=settings.job_table,
        task_queue_url=settings.task_queue_url,
        results_queue_url=settings.results_queue_url,
        wait_s=1,
        max_receive_count=kw.pop("max_receive_count", 10),
        backoff=Backoff(base_s=0.05, cap_s=0.2),
        **kw,
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_transient_errors_on_every_worker_call_never_end_the_slot_and_lose_nothing(
    aws_env: LocalCloud, clients: dict[str, Any]
) -> None:
    # GIVEN a 3-shard data_parallel job on a queue with a 3 s visibility timeout, and a worker
    # every AWS call of which fails now and then, and once per operation for longer than botocore's
    # 2 attempts (so the error reaches the worker's code)
    settings = provision(clients["sqs"], clients["dynamodb"], clients["s3"], task_visibility_s=3)
    engine = Engine(
        settings=settings,
        ddb=clients["dynamodb"],
        sqs=clients["sqs"],
        s3=clients["s3"],
        events=clients["events"],
    )
    engine.submit(
        {
            "job_id": "flaky",
            "kind": "data_parallel",
            "dataset": {"num_samples": 30},
            "sharding": {"shard_count": 3},
            "hyperparameters": {"sleep": 1.5},
            "entrypoint": "tests.workloads:slow",
        }
    )
    injector = FaultInjector(seed=5, p=0.1, bursts=dict.fromkeys(WORKER_OPERATIONS, 3), burst_after=1)
    w = faulty_worker(settings, injector, visibility_s=2)
    stop = threading.Event()
    slot = threading.Thread(target=w.run, args=(stop,), daemon=True)
    slot.start()
    # WHEN it works through the round's shards and the reduce (results fed to the engine as they come)
    seen: dict[tuple[str, int], ShardResult] = {}

    def progress() -> bool:
        assert slot.is_alive(), "the slot died"
        fresh = [
            ShardResult.from_json(m["Body"]) for m in receive_all(clients["sqs"], settings.results_queue_url)
        ]
        engine.ingest([Outcome(r) for r in fresh])
        seen.update({(r.task_type, r.shard_id): r for r in fresh})
        return engine.status("flaky").status == "SUCCEEDED"

    wait_for(progress, "the job to succeed", timeout=180)
    stop.set()
    slot.join(timeout=30)
    # THEN the job succeeded from every shard, every operation had its faults, some outlived
    # botocore's retries, and the slot lived through all of them
    assert sorted(seen) == [("reduce", 0), ("train", 0), ("train", 1), ("train", 2)]
    assert all(r.status == "succeeded" for r in seen.values())
    assert set(injector.injected) == set(WORKER_OPERATIONS), injector.injected
    assert w.errors >= 1 and w.fatal is None
    assert not slot.is_alive()


def test_an_unreachable_endpoint_is_backed_off_from_never_mistaken_for_idle(
    aws_env: LocalCloud, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a worker whose endpoint refuses connections (nothing listens there), --idle-exit 0.5 s
    w = faulty_worker(settings, None, endpoint=f"http://127.0.0.1:{free_port()}")

    # WHEN it has failed to poll many times over, for longer than the idle limit
    def stop_after_failures() -> None:
        wait_for(lambda: w.errors >= 15, "failed polls")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_after_failures, daemon=True).start()
    with caplog.at_level(logging.INFO, logger="shardq.worker"):
        code = serve([w], grace_s=0, idle_exit_s=0.5)
    # THEN it kept polling (backing off) until told to stop, and did not call itself idle
    assert code == EXIT_OK
    assert w.errors >= 15 and w.fatal is None
    assert "exiting 0 (signal)" in caplog.text
    assert "idle for" not in caplog.text
    assert "EndpointConnectionError" in caplog.text


def test_a_fatal_error_hands_the_task_back_and_exits_4(
    aws_env: LocalCloud,
    engine: Engine,
    settings: Settings,
    clients: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # GIVEN two slots whose role may not write to the artifact bucket
    engine.submit(
        {
            "job_id": "denied",
            "kind": "map",
            "dataset": {"num_samples": 10},
            "sharding": {"shard_count": 1},
            "entrypoint": "tests.workloads:ok",
        }
    )
    injector = FaultInjector(fatal={"PutObject": "AccessDenied"})
    workers = [faulty_worker(settings, injector), faulty_worker(settings, injector)]
    # WHEN one of them trains the shard and uploads its model
    with caplog.at_level(logging.INFO, logger="shardq.worker"):
        code = serve(workers, grace_s=5)
    # THEN the worker exits 4 naming the error, posts nothing, and the task is visible at once
    assert code == EXIT_FATAL
    assert "AccessDenied" in caplog.text and "fatal AWS error" in caplog.text
    assert receive_all(clients["sqs"], settings.results_queue_url) == []
    again = clients["sqs"].receive_message(QueueUrl=settings.task_queue_url, WaitTimeSeconds=2)
    assert len(again.get("Messages", [])) == 1


class BrokenBackoff(Backoff):
    """A bug in the error path itself: the one way left for a slot to die."""

    def next_delay(self) -> float:
        raise RuntimeError("bug in the backoff")


def test_when_every_slot_dies_the_exit_code_says_so(aws_env: LocalCloud, settings: Settings) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    workers = [faulty_worker(settings, None, endpoint=endpoint) for _ in range(2)]
    for w in workers:
        w.backoff = BrokenBackoff()
    assert serve(workers, grace_s=0) == EXIT_SLOT_DIED


def test_a_queue_deleted_under_a_running_worker_process_ends_it_with_exit_4(
    cloud: LocalCloud, settings: Settings, clients: dict[str, Any], tmp_path: Path
) -> None:
    # GIVEN a worker process polling its queue
    env = {**os.environ, **cloud.env(), "PYTHONPATH": str(ROOT)}
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "shardq.cli", "worker",
                "--task-queue-url", settings.task_queue_url,
                "--results-queue-url", settings.results_queue_url,
                "--job-table", settings.job_table,
                "--wait-seconds", "1", "--concurrency", "2", "--log-format", "text", "--allow", "tests.*",
            ],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        wait_for(
            lambda: "worker started" in log.read_text() or proc.poll() is not None, "the worker to start"
        )
        # WHEN its queue is deleted (a torn-down stack, a wrong URL after a redeploy)
        clients["sqs"].delete_queue(QueueUrl=settings.task_queue_url)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # THEN it exits 4, saying why, rather than polling a queue that is gone or exiting 0
    text = log.read_text()
    assert code == EXIT_FATAL, text
    assert "NonExistentQueue" in text and "fatal AWS error" in text
