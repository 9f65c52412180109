"""The task lease on the local cloud: the receive's own VisibilityTimeout, a heartbeat that rides
out transient errors, a lost lease that stops the task instead of finishing it twice, and a
SIGKILLed worker's task received by another worker within a minute."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

import pytest

from shardq.core.engine import Engine
from shardq.core.settings import Settings
from shardq.local.cloud import LocalCloud
from shardq.worker.lease import DEFAULT_LEASE_S, DONE, keep_leased
from tests.helpers import HttpFaults
from tests.worker.test_checkpoints_worker import (
    in_process_worker,
    pointer_step,
    results,
    spawn,
    submit,
    wait_for_step,
)

log = logging.getLogger("tests.lease")


def fifo_message(sqs: Any, url: str, body: str = "x") -> None:
    sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId="g", MessageDeduplicationId=body)


def receive(sqs: Any, url: str, **kw: Any) -> list[dict[str, Any]]:
    return list(sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, **kw).get("Messages", []))


def test_the_local_cloud_honours_the_receives_visibility_timeout_and_its_extension_on_fifo(
    clients: dict[str, Any], settings: Settings
) -> None:
    # The first lease is the receive's VisibilityTimeout, not the queue's (300 s here)
    sqs, url = clients["sqs"], settings.task_queue_url
    fifo_message(sqs, url)
    (held,) = receive(sqs, url, VisibilityTimeout=1)
    assert receive(sqs, url) == []
    time.sleep(1.5)
    (again,) = receive(sqs, url, VisibilityTimeout=1)
    # ChangeMessageVisibility extends the lease from now
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=again["ReceiptHandle"], VisibilityTimeout=4)
    time.sleep(1.5)
    assert receive(sqs, url) == []
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=again["ReceiptHandle"], VisibilityTimeout=0)
    assert len(receive(sqs, url, WaitTimeSeconds=2)) == 1
    assert held["MessageId"] == again["MessageId"]


def test_a_heartbeat_rides_out_transient_errors_and_keeps_the_task_invisible(
    clients: dict[str, Any], settings: Settings
) -> None:
    # GIVEN a task held on a 2 s lease whose first two extensions fail (a throttle, a dropped link)
    sqs, url = clients["sqs"], settings.task_queue_url
    fifo_message(sqs, url)
    (message,) = receive(sqs, url, VisibilityTimeout=2)
    failures = [ConnectionError("injected"), ConnectionError("injected")]

    def extend(seconds: int) -> None:
        if failures:
            raise failures.pop()
        sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=seconds
        )

    done, abandoned = threading.Event(), threading.Event()
    outcome: list[str] = []
    beat = threading.Thread(
        target=lambda: outcome.append(
            keep_leased(extend, 2, received_at=time.monotonic(), done=done, abandoned=abandoned, logger=log)
        )
    )
    beat.start()
    # WHEN the task runs three times as long as its lease
    seen = [receive(sqs, url) for _ in range(6) if not time.sleep(1)]
    done.set()
    beat.join()
    # THEN no other receiver ever got it, and the heartbeat ended with the task
    assert seen == [[]] * 6 and failures == [] and outcome == [DONE]


def test_a_lost_lease_stops_the_task_and_posts_nothing_and_the_next_worker_resumes_it(
    cloud: LocalCloud,
    engine: Engine,
    settings: Settings,
    clients: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # GIVEN a worker whose every heartbeat fails (its network to SQS gone), on a 2 s lease
    submit(engine, "lost", steps=200, pause=0.1)
    cut_off = cloud.client("sqs")
    faults = HttpFaults(cut_off)
    faults.fail("ChangeMessageVisibility", times=None)
    first = in_process_worker(settings, {**clients, "sqs": cut_off}, visibility_s=2)
    # WHEN it runs the task past the lease
    with caplog.at_level(logging.INFO, logger="shardq.worker"):
        assert first.poll_once() is True
    faults.close()
    # THEN the task stopped (checkpointed on ctx.should_stop) without posting a result
    assert "another worker may hold the task" in caplog.text and "its lease was lost" in caplog.text
    assert results(clients, settings) == []
    saved = pointer_step(clients["s3"], settings.artifact_bucket, "lost")
    assert saved is not None and 0 < saved < 200
    # AND the next worker receives it once the lease ran out, and resumes it from that checkpoint
    nxt = in_process_worker(settings, clients)
    assert nxt.poll_once() is True
    (result,) = results(clients, settings)
    assert (result["status"], result["attempt"], result["resume_step"]) == ("succeeded", 2, saved)


def test_a_sigkilled_workers_task_is_received_by_another_worker_within_a_minute(
    cloud: LocalCloud, engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN the stack's queue (its default visibility 300 s) and a worker process with the default
    # lease, a few checkpoints into its task
    attrs = clients["sqs"].get_queue_attributes(
        QueueUrl=settings.task_queue_url, AttributeNames=["VisibilityTimeout"]
    )
    assert int(attrs["Attributes"]["VisibilityTimeout"]) > DEFAULT_LEASE_S
    submit(engine, "killed", steps=40, pause=0.2)
    proc = spawn(cloud, settings, "--spot-notice", "off")
    try:
        wait_for_step(clients["s3"], settings.artifact_bucket, "killed", 2)
    finally:
        # WHEN it is SIGKILLed (an instance gone without notice, an OOM kill)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    killed_at = time.monotonic()
    received: list[float] = []
    # THEN another worker receives the task once the lease runs out, not after the queue's 300 s
    nxt = in_process_worker(settings, clients, on_task_start=lambda: received.append(time.monotonic()))
    nxt.wait_s = 20
    while not nxt.poll_once():
        assert time.monotonic() - killed_at < 400, "the task never came back"
    (result,) = results(clients, settings)
    assert (result["status"], result["attempt"]) == ("succeeded", 2)
    assert result["resume_step"] >= 2
    # The figure for BENCHMARKS.md (section "Preemption"); timing is not asserted here.
    print(f"\nSIGKILLed worker's task received again {received[0] - killed_at:.1f} s after the kill")
