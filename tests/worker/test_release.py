"""A graceful release costs no receive toward the DLQ (``shardq.worker.release``), on the local cloud:
the task is re-sent (same group, ``releases`` + 1, a fresh deduplication id) before the received
message is deleted, so a Spot storm never walks a task to the dead-letter queue."""

from __future__ import annotations

import json
import signal
import threading
from typing import Any

from shardq.core.contracts import ShardTask
from shardq.core.engine import Engine
from shardq.core.settings import Settings
from shardq.local.cloud import LocalCloud
from shardq.local.resources import dlq_urls
from shardq.worker.release import MAX_RELEASES, release_dedup_id
from tests.finished import aggregate
from tests.helpers import receive_all
from tests.worker.test_checkpoints_worker import (
    in_process_worker,
    pointer_step,
    spawn,
    submit,
    wait_for_step,
)


def stop_after_step(worker: Any, clients: dict[str, Any], settings: Settings, job_id: str, step: int) -> None:
    """Ask ``worker`` to stop once the task's checkpoint reached ``step`` (in a thread)."""

    def go() -> None:
        wait_for_step(clients["s3"], settings.artifact_bucket, job_id, step)
        worker.stop_signal.request("test")

    threading.Thread(target=go, daemon=True).start()


def test_a_task_released_six_times_by_sigtermed_workers_is_trained_once_and_never_dead_lettered(
    cloud: LocalCloud, engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN the stack's redrive policy: the 5th receive of a task is its last
    assert settings.max_receive_count == 5
    submit(engine, "storm", steps=400, pause=0.05)
    # WHEN six worker processes in turn receive the task, checkpoint once more, and get SIGTERM
    saved = 0
    for _ in range(6):
        proc = spawn(cloud, settings, "--grace-seconds", "60")
        try:
            wait_for_step(clients["s3"], settings.artifact_bucket, "storm", saved + 1)
            proc.send_signal(signal.SIGTERM)
            output, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0 and "released to the queue" in output, output
        saved = pointer_step(clients["s3"], settings.artifact_bucket, "storm") or 0
    # THEN the task is still on the queue, never dead-lettered, and the seventh attempt trains it
    assert in_process_worker(settings, clients).poll_once() is True
    assert receive_all(clients["sqs"], dlq_urls(clients["sqs"], settings)["tasks"]) == []
    assert aggregate(engine) == 1
    job = engine.store.get_job("storm")
    assert job.status == "SUCCEEDED"
    (row,) = engine.store.results("storm", 0)
    # AND its attempt number went on counting across the re-sent messages, with the history
    assert (row.result.attempt, row.result.resume_step) == (7, saved)
    assert [a["attempt"] for a in row.result.attempts] == [1, 2, 3, 4, 5, 6]


class DeleteFailsOnce:
    """The real SQS client, but the first DeleteMessage on the task queue fails (a crash there)."""

    def __init__(self, sqs: Any, queue_url: str) -> None:
        self._sqs, self._url, self.failed = sqs, queue_url, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)

    def delete_message(self, **kw: Any) -> Any:
        if kw["QueueUrl"] == self._url and not self.failed:
            self.failed = True
            raise ConnectionError("simulated crash between the re-send and the delete")
        return self._sqs.delete_message(**kw)


def test_the_resend_goes_first_so_a_failed_delete_leaves_a_duplicate_counted_once(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a worker whose delete of the released message fails
    submit(engine, "dup", steps=6, pause=0.1)
    flaky = DeleteFailsOnce(clients["sqs"], settings.task_queue_url)
    first = in_process_worker(settings, {**clients, "sqs": flaky}, visibility_s=2)
    stop_after_step(first, clients, settings, "dup", 2)
    # WHEN it is stopped mid-task
    assert first.poll_once() is True and flaky.failed
    # THEN the task is on the queue twice (the re-send and the original, back after its lease)...
    second = in_process_worker(settings, clients)
    assert second.poll_once() is True
    assert second.poll_once() is True
    # ...both run, and the aggregator records the shard once
    assert aggregate(engine) == 2
    (row,) = engine.store.results("dup", 0)
    assert row.result.status == "succeeded"
    assert engine.store.get_job("dup").status == "SUCCEEDED"
    assert receive_all(clients["sqs"], settings.task_queue_url) == []


def test_a_task_past_the_release_cap_is_released_the_counted_way(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a task already re-sent MAX_RELEASES times
    submit(engine, "capped", steps=50, pause=0.1)
    (message,) = receive_all(clients["sqs"], settings.task_queue_url)
    task = ShardTask.from_json(message["Body"])
    body = json.loads(message["Body"]) | {"releases": MAX_RELEASES}
    clients["sqs"].send_message(
        QueueUrl=settings.task_queue_url,
        MessageBody=json.dumps(body),
        MessageGroupId=message["Attributes"]["MessageGroupId"],
        MessageDeduplicationId=release_dedup_id(task.key, MAX_RELEASES),
    )
    # WHEN a worker is stopped mid-task
    worker = in_process_worker(settings, clients)
    stop_after_step(worker, clients, settings, "capped", 1)
    assert worker.poll_once() is True
    # THEN the same message comes back (receive count 2, releases unchanged): this release counted
    (again,) = receive_all(clients["sqs"], settings.task_queue_url)
    assert again["Attributes"]["ApproximateReceiveCount"] == "2"
    assert json.loads(again["Body"])["releases"] == MAX_RELEASES


def test_a_spot_noticed_slot_hands_its_task_back_once_before_the_supervisor_notices(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a worker slot polling in its loop, as the supervisor runs it
    submit(engine, "late-tick", steps=40, pause=0.1)
    worker = in_process_worker(settings, clients)
    stop = threading.Event()
    slot = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    slot.start()
    # WHEN a Spot notice sets the worker's stop signal mid-task, and the supervisor turns it into
    # the slots' stop 2 s late (its tick starved on a loaded machine)
    wait_for_step(clients["s3"], settings.artifact_bucket, "late-tick", 2)
    worker.stop_signal.request("Spot interruption notice")
    slot.join(timeout=2.0)
    stop.set()
    slot.join()
    # THEN the slot ran the task once and received nothing more after handing it back...
    saved = pointer_step(clients["s3"], settings.artifact_bucket, "late-tick")
    assert worker.tasks_done == 1 and saved is not None
    # AND the next worker's run is attempt 2 (one re-send, received once), resuming where it stopped
    assert in_process_worker(settings, clients).poll_once() is True
    assert aggregate(engine) == 1
    (row,) = engine.store.results("late-tick", 0)
    assert (row.result.attempt, row.result.resume_step) == (2, saved)
    assert [a["attempt"] for a in row.result.attempts] == [1]


def test_release_dedup_ids_are_named_after_the_splitters_and_fit_sqs() -> None:
    assert release_dedup_id("j:0:3:train", 1) == "j:0:3:train:rel1"
    assert release_dedup_id("j:0:3:train:rel1", 2) == "j:0:3:train:rel2"
    assert release_dedup_id("j:0:3:train:g2:rel9", 10) == "j:0:3:train:g2:rel10"
    long = release_dedup_id("j" * 125, 3)
    assert len(long) == 64 and long != release_dedup_id("j" * 125, 4)
