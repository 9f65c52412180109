"""A job cut short (cancel, failure budget, spend budget) counts nothing after its manifest is read.

The aggregator ends such a job in three steps: freeze it (``JobStore.freeze_ending``: a
conditional ``ending`` mark every counting transaction checks), read the frozen record and its
outcomes into the manifest, then end it. These tests drive the real engine on the local cloud
and record an outcome of a task that was still running *between* the manifest's read and the
job's end (the window a new-user trial hit: an ASHA sweep whose ``status`` said 50 trials /
$0.018937 while its manifest said 49 / $0.018835). The outcome must be recorded late,
uncounted, and the job record and its manifest must agree on every count and on the cost.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from shardq.core import fedbuff, operations
from shardq.core.contracts import ShardResult, ShardTask
from shardq.core.engine import Engine
from shardq.core.jobstore import JobRecord, Outcome
from shardq.core.store.fedbuff import AFTER_END, FedBuffStore
from shardq.dashboard.data import DashboardData
from tests.helpers import receive_all, result_for, tasks_of
from tests.requests import make_request

# 3.6 USD/hour for the helpers' 0.5 s results: 500 micro-USD each.
PRICE = 3.6
EACH_UUSD = 500
ASHA = {"method": "asha", "eta": 3, "min_budget": 1, "max_budget": 9}


def asha(job_id: str, **extra: Any) -> dict[str, Any]:
    return make_request(
        "sweep",
        job_id=job_id,
        search_space={"lr": {"log_uniform": [1e-4, 1e-1]}},
        search={"method": "random", "num_trials": 9, "seed": 7},
        early_stopping=dict(ASHA),
        max_parallel=3,
        **extra,
    )


def fedbuff_job(job_id: str, **extra: Any) -> dict[str, Any]:
    return make_request(
        job_id=job_id,
        shards=3,
        rounds=2,
        max_parallel=3,
        model={"init_uri": "s3://models/init.npz"},
        strategy={"name": "fedbuff", "buffer_size": 3},
        **extra,
    )


REQUESTS: dict[str, Callable[..., dict[str, Any]]] = {
    "asha": asha,
    "data_parallel": lambda job_id, **extra: make_request(job_id=job_id, shards=3, rounds=2, **extra),
    "map": lambda job_id, **extra: make_request("map", job_id=job_id, shards=3, **extra),
    "fedbuff": fedbuff_job,
}


def take(engine: Engine, clients: dict[str, Any]) -> list[ShardTask]:
    return tasks_of(receive_all(clients["sqs"], engine.settings.task_queue_url, max_empty=1))


def priced(task: ShardTask, status: str = "succeeded") -> ShardResult:
    return replace(result_for(task, status=status), price_per_hour=PRICE)


def manifest_of(engine: Engine, job: JobRecord) -> dict[str, Any]:
    assert job.result_uri
    bucket, key = job.result_uri.removeprefix("s3://").split("/", 1)
    return dict(json.loads(engine.s3.get_object(Bucket=bucket, Key=key)["Body"].read()))


class CountBetweenManifestAndEnd:
    """Records ``result`` right after the finisher read the job's manifest, before the job ends:
    what a worker's result arriving in that window does (through the path its kind records by)."""

    def __init__(self, engine: Engine, monkeypatch: pytest.MonkeyPatch, result: ShardResult) -> None:
        self.engine, self.result, self.fired = engine, result, False
        self.late: bool | None = None
        original = engine.finisher.manifest

        def manifest(job: JobRecord, *args: Any, **kwargs: Any) -> dict[str, Any]:
            body = original(job, *args, **kwargs)
            if not self.fired:
                self.fired = True
                self._record(job)
            return body

        monkeypatch.setattr(engine.finisher, "manifest", manifest)

    def _record(self, job: JobRecord) -> None:
        outcome = Outcome(self.result)
        if fedbuff.applies(job.request):
            fedbuff.Driver(self.engine.advancer).ingest(job.job_id, job.request, [outcome], deadline=None)
            update = FedBuffStore(self.engine.store).updates(job.job_id, [(self.result.shard_id, 0)])
            self.late = update[(self.result.shard_id, 0)].state == AFTER_END
        else:
            self.late = outcome in self.engine.advancer.record([outcome]).late


def counted_train(job: JobRecord) -> int:
    return sum(
        v
        for (kind, _, phase), v in job.counters.items()
        if kind in ("ok", "fail", "div") and phase == "train"
    )


def assert_status_and_manifest_agree(engine: Engine, job: JobRecord) -> None:
    manifest = manifest_of(engine, job)
    assert manifest["status"] == job.status
    assert manifest["cost"]["cost_usd"] == job.cost_micro_usd / 1_000_000
    # a FedBuff job's failures are client updates, listed in its own section
    failed = manifest["fedbuff"]["updates_failed"] if "fedbuff" in manifest else manifest["failed_count"]
    assert failed == job.failed_total
    if job.kind == "sweep":
        # every counted trial outcome is on the leaderboard (one row per trial: its furthest rung)
        trials = {
            r.result.shard_id for r in engine.store.iter_results(job.job_id) if r.result.task_type == "train"
        }
        assert len(manifest["leaderboard"]) + manifest["failed_count"] >= len(trials) > 0
        assert sum(1 for _ in engine.store.iter_results(job.job_id)) == counted_train(job)
    elif job.kind == "map":
        assert manifest["outputs_count"] + manifest["failed_count"] == counted_train(job)
    elif "fedbuff" in manifest:
        counts = FedBuffStore(engine.store).counts(job.job_id)
        assert manifest["fedbuff"]["updates_applied"] == counts.applied


@pytest.mark.parametrize("kind", list(REQUESTS))
def test_a_result_in_the_window_between_manifest_and_cancel_is_late_and_uncounted(
    engine: Engine, clients: dict[str, Any], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # GIVEN a running job with one priced result counted and the others still running
    engine.submit(REQUESTS[kind](f"fz-{kind}"))
    first = sorted(take(engine, clients), key=lambda t: t.shard_id)
    assert engine.ingest([Outcome(priced(first[0]))]) == []
    # WHEN it is cancelled and a running task's result arrives after the manifest was read
    hook = CountBetweenManifestAndEnd(engine, monkeypatch, priced(first[1]))
    operations.cancel(engine, f"fz-{kind}")
    job = engine.store.get_job(f"fz-{kind}")
    # THEN the result is late, the job is CANCELLED and its record and manifest agree
    assert hook.fired and hook.late is True
    assert job.status == "CANCELLED"
    assert job.cost_micro_usd == EACH_UUSD
    assert_status_and_manifest_agree(engine, job)


@pytest.mark.parametrize("kind", ["asha", "data_parallel", "fedbuff"])
def test_a_result_in_the_window_after_the_failure_budget_ran_out_is_late_and_uncounted(
    engine: Engine, clients: dict[str, Any], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    engine.submit(REQUESTS[kind](f"fb-{kind}", max_failed_shards=0))
    first = sorted(take(engine, clients), key=lambda t: t.shard_id)
    hook = CountBetweenManifestAndEnd(engine, monkeypatch, priced(first[1]))
    # WHEN a failure puts the job over its budget, and a running task's result lands in the window
    assert engine.ingest([Outcome(priced(first[0], status="failed"))]) == []
    job = engine.store.get_job(f"fb-{kind}")
    assert hook.fired and hook.late is True
    assert job.status == "FAILED" and "max_failed_shards=0" in (job.error or "")
    assert job.cost_micro_usd == EACH_UUSD
    assert_status_and_manifest_agree(engine, job)


def test_a_job_frozen_by_an_invocation_that_died_is_ended_by_the_next_and_a_retry_unfreezes_it(
    engine: Engine, clients: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.submit(REQUESTS["data_parallel"]("fr", max_failed_shards=0))
    first = sorted(take(engine, clients), key=lambda t: t.shard_id)
    original = engine.finisher.finalize

    def dies(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("the invocation timed out")

    # GIVEN an invocation that froze the job over its failure budget and died before ending it
    monkeypatch.setattr(engine.finisher, "finalize", dies)
    assert len(engine.ingest([Outcome(priced(first[0], status="failed"))])) == 1
    job = engine.store.get_job("fr")
    frozen = job.frozen_as()
    assert job.status == "RUNNING" and frozen is not None
    assert frozen[0] == "FAILED" and "max_failed_shards=0" in (frozen[1] or "")
    # THEN a result that arrives meanwhile is late, and the next advance ends the job as frozen
    assert engine.advancer.record([Outcome(priced(first[1]))]).late
    monkeypatch.setattr(engine.finisher, "finalize", original)
    assert engine.advance("fr") == "FAILED"
    job = engine.store.get_job("fr")
    assert "1 shards failed, over max_failed_shards=0" in (job.error or "")
    assert_status_and_manifest_agree(engine, job)
    # WHEN it is retried: the freeze is lifted with the failure, and results count again
    operations.retry_failed(engine, "fr")
    job = engine.store.get_job("fr")
    assert job.status == "RUNNING" and job.ending is None
    retried = [t for t in take(engine, clients) if t.shard_id == 0]
    assert engine.advancer.record([Outcome(priced(retried[0]))]).recorded


@pytest.mark.parametrize("ending", ["cancel", "failure_budget"])
def test_an_ended_async_sweep_shows_no_more_sent_than_its_total_and_nothing_outstanding(
    engine: Engine, clients: dict[str, Any], ending: str
) -> None:
    # GIVEN an ASHA sweep with trials sent, one counted, the others cut short by the end
    engine.submit(asha("pg", max_failed_shards=0))
    first = sorted(take(engine, clients), key=lambda t: t.shard_id)
    if ending == "cancel":
        assert engine.ingest([Outcome(priced(first[0]))]) == []
        operations.cancel(engine, "pg")
    else:
        assert engine.ingest([Outcome(priced(first[0], status="failed"))]) == []
    job = engine.store.get_job("pg")
    assert job.status == ("CANCELLED" if ending == "cancel" else "FAILED")
    assert job.enqueued(0, "train") >= 3  # what the record holds: more sent than ran
    # THEN every view's rows (status/watch: operations.progress; the dashboard's job API) agree
    rows = operations.progress(job)
    rung0 = rows[0]
    assert (rung0.done + rung0.failed, rung0.enqueued, rung0.total, rung0.outstanding) == (1, 1, 1, 0)
    assert all(p.enqueued <= p.total and p.outstanding == 0 for p in rows)
    dashboard = DashboardData(
        store=engine.store,
        sqs=clients["sqs"],
        s3=clients["s3"],
        queues={"tasks": engine.settings.task_queue_url},
    )
    page = dashboard.job("pg")["progress"]
    assert all(p["enqueued"] <= p["total"] and p["outstanding"] == 0 for p in page)
