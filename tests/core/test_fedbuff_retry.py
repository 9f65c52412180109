"""``shardq retry`` of a FedBuff job on the local cloud: a job FAILED over its failure budget or by a
failed reduce resumes (failures forgiven, every cut-off client task sent again) and runs to its
end; the over-budget error names the first failed update; nothing is applied twice."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shardq.core.contracts import ShardTask
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.operations import OperationError, retry_failed
from shardq.core.store.fedbuff import FedBuffStore
from tests.chaos.versions import follows_versions
from tests.core.test_fedbuff import fb, take
from tests.helpers import result_for


def finish(engine: Engine, job_id: str, tasks: list[ShardTask]) -> str:
    """Every task reports ok, round after round, until the job ends; its status."""
    for _ in range(50):
        if tasks:
            engine.ingest([Outcome(result_for(t)) for t in tasks])
        job = engine.store.get_job(job_id)
        if job.status != "RUNNING":
            return job.status
        tasks = take(engine)
    raise AssertionError(f"{job_id} did not end")


def test_a_job_failed_over_its_budget_resumes_and_ends(engine: Engine) -> None:
    # GIVEN 3 clients, K = 2, 2 versions, no failure allowed: one update fails (NaN loss)
    engine.submit({**fb("over", buffer_size=2, max_staleness=2), "max_failed_shards": 0})
    first = {t.shard_id: t for t in take(engine)}
    nan = replace(result_for(first[1]), metrics={"loss": float("nan")})
    engine.ingest([Outcome(result_for(first[0])), Outcome(nan)])
    job = engine.store.get_job("over")
    # THEN the job failed, and its error names the update and why (not "round 0 shard 1")
    assert job.status == "FAILED"
    error = job.error or ""
    assert error.startswith(
        "1 shards failed, over max_failed_shards=0; first: update 0 of client 1 (version 0): "
    )
    assert "loss" in error, error
    take(engine)  # the tasks sent before it failed: their workers drop them (the job is FAILED)
    # a client's update arriving while the job is FAILED is kept apart, uncounted
    engine.ingest([Outcome(result_for(first[2]))])
    assert FedBuffStore(engine.store).updates("over", [(2, 0)])[(2, 0)].state == "after_end"
    # WHEN it is retried
    report = retry_failed(engine, "over")
    # THEN it runs again with its failure forgiven, and every client trains again: 0 and 1 their
    # next update (from the version fixed for it), 2 its update that came after the end
    job = engine.store.get_job("over")
    assert (report.status, job.status, job.failed_total) == ("RUNNING", "RUNNING", 0)
    assert report.retried == [0, 1, 2]
    resent = take(engine)
    assert sorted((t.shard_id, t.round) for t in resent) == [(0, 1), (1, 1), (2, 0)]
    assert {t.generation for t in resent} == {report.generation}
    # ... and the job runs to its end, every update applied once
    assert finish(engine, "over", resent) == "SUCCEEDED"
    assert not follows_versions(engine, "over")
    states = {(u.client, u.seq): u.state for u in FedBuffStore(engine.store).all_updates("over")}
    assert states[(1, 0)] == "failed" and states[(2, 0)] in ("applied", "late", "surplus")


def test_a_job_failed_by_its_reduce_resumes_from_that_version(engine: Engine) -> None:
    engine.submit(fb("rf", clients=2, buffer_size=2))
    engine.ingest([Outcome(result_for(t)) for t in take(engine)])
    # the reduce, and the clients' next tasks from version 0 (they train on while it runs; taken
    # here, as a worker drops them once the job failed)
    (reduce,) = [t for t in take(engine) if t.task_type == "reduce"]
    engine.ingest([Outcome(result_for(reduce, status="failed"))])
    assert engine.store.get_job("rf").status == "FAILED"
    # WHEN retried: THEN the reduce goes out again, from the same buffer
    report = retry_failed(engine, "rf")
    assert (report.round, report.phase, report.status) == (0, "reduce", "RUNNING")
    tasks = take(engine)
    assert [(t.task_type, t.round) for t in tasks if t.task_type == "reduce"] == [("reduce", 0)]
    assert finish(engine, "rf", tasks) == "SUCCEEDED"
    assert not follows_versions(engine, "rf")


def test_a_running_job_without_failures_and_a_finished_one_are_refused(engine: Engine) -> None:
    engine.submit(fb("ok", buffer_size=2))
    tasks = take(engine)
    with pytest.raises(OperationError, match="job ok is RUNNING with no failed update to retry"):
        retry_failed(engine, "ok")
    assert finish(engine, "ok", tasks) == "SUCCEEDED"
    with pytest.raises(OperationError, match="job ok is SUCCEEDED"):
        retry_failed(engine, "ok")


def test_a_retry_that_died_midway_is_finished_by_the_next(engine: Engine) -> None:
    # GIVEN a retry that forgave and reopened, then died before sending anything
    engine.submit({**fb("half", clients=2, buffer_size=2), "max_failed_shards": 0})
    first = take(engine)
    engine.ingest([Outcome(result_for(first[0], status="failed"))])
    assert engine.store.get_job("half").status == "FAILED"
    take(engine)  # client 0's next task, sent before the job failed: dropped by its worker
    fbs = FedBuffStore(engine.store)
    fbs.mark_retrying("half", 1)
    fbs.forgive("half", "FAILED")
    engine.reopen("half")
    assert take(engine) == []
    # WHEN retried again (RUNNING, no failure counted): THEN it sends what the first one did not
    report = retry_failed(engine, "half")
    assert sorted((t.shard_id, t.round) for t in take(engine)) == [(0, 1), (1, 0)]
    assert report.retried == [0, 1] and not fbs.retrying("half")
