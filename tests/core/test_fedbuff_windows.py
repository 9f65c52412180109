"""FedBuff under task windows with more clients than lanes (``max_parallel``): every client gets its
first task and trains, round 0's first-update fan-out stays within its window, and each client has
at most one task out at a time (FedBuff's own bound). On the local cloud, with real workers.

Found in review: slow start grew a job's window by its counted round-0 train outcomes, which a
FedBuff job never counts (its updates count per version), so the first fan-out stayed at one task
per lane while version 0 was open and the other clients got no first task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shardq.core.engine import Engine
from shardq.core.jobstore import JobRecord
from shardq.core.outstanding import tasks_out
from shardq.core.settings import Settings
from shardq.core.store.fedbuff import FedBuffStore
from tests.core.test_fedbuff import _put_init
from tests.core.test_windows import make, windowed
from tests.finished import aggregate, workers
from tests.requests import make_request

CLIENTS = 8
LANES = 2


def test_every_client_of_a_windowed_fedbuff_job_trains_when_clients_outnumber_lanes(
    settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN windows of 2 tasks per lane and a FedBuff job of 8 clients over 2 lanes, K = 4, 4 versions
    engine: Engine = make(windowed(settings), clients)
    request = make_request(
        job_id="fbw",
        shards=CLIENTS,
        rounds=4,
        max_parallel=LANES,
        uri="synthetic://linear?dim=4&seed=5",
        num_samples=CLIENTS * 32,
        entrypoint="examples.linear:train",
        hyperparameters={"lr": 0.05, "epochs": 1, "batch_size": 16},
        model={"init_uri": _put_init(engine, dim=4)},
        strategy={"name": "fedbuff", "buffer_size": 4},
    )
    fb = FedBuffStore(engine.store)
    most_queued: list[int] = []

    def each(job: JobRecord) -> None:
        if job.terminal:
            return
        # round 0's first tasks out (sent, their client's first update not recorded) stay within
        # the window the last send was held to ...
        back = {u.client for u in fb.all_updates(job.job_id) if u.seq == 0}
        assert job.window is not None
        assert job.enqueued(0, "train") - len(back) <= job.window
        # ... and a client has one task out at a time (plus the version's reduce)
        assert tasks_out(job) <= CLIENTS + 1
        # AND the view's "queued" is every client task on the queue, whichever version it follows
        # (the workers have finished their polls: every task out is a message on the queue)
        attrs = clients["sqs"].get_queue_attributes(
            QueueUrl=settings.task_queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        on_queue = sum(int(v) for v in attrs.values())
        reduces = job.enqueued(job.round, "reduce") - job.done(job.round, "reduce")
        assert job.view().queued == on_queue - reduces
        most_queued.append(on_queue - reduces)

    # WHEN it is submitted THEN its first window is one task per lane, as any job's
    engine.submit(request)
    assert engine.store.get_job("fbw").enqueued(0, "train") == LANES
    # WHEN real workers run it to its end
    job = drive(engine, "fbw", each)
    # THEN it ends SUCCEEDED, every client got its first task and every client's update was recorded
    assert job.status == "SUCCEEDED", job.error
    assert job.enqueued(0, "train") == CLIENTS
    trained = {u.client for u in fb.all_updates("fbw") if u.state != "failed"}
    assert trained == set(range(CLIENTS))
    assert max(most_queued) > LANES  # (the follow-ups of version 0's clients were counted too)


def drive(engine: Engine, job_id: str, each: Callable[[JobRecord], None], steps: int = 400) -> JobRecord:
    """Three real workers (more than the lanes) poll once each, then the aggregator records; until
    the job ends. ``each`` sees the job record after every step."""
    crew = workers(engine, 3)
    for _ in range(steps):
        for w in crew:
            w.poll_once()
        aggregate(engine)
        job = engine.store.get_job(job_id)
        each(job)
        if job.terminal:
            return job
    raise AssertionError(f"{job_id} did not finish in {steps} steps")
