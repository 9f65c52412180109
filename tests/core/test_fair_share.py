"""Tenants, weights, priorities with aging, and quotas (issue #25 items 2-4, 7), on the local cloud."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from shardq.core.admission import Admission, QuotaExceeded
from shardq.core.contracts import TrainingRequest, ValidationError
from shardq.core.engine import Engine, request_hash
from shardq.core.jobstore import JobRecord, Outcome
from shardq.core.settings import Settings
from tests.helpers import Clock, count_messages, receive_all, result_for, tasks_of

LANES = 4
TENANTS = {
    "vision": {"weight": 2},
    "speech": {"weight": 1},
    "small": {"quotas": {"running_jobs": 1, "queued_shards": 50}},
    "capped": {"quotas": {"running_jobs": 2, "running_tasks": 3}},
}


def make(settings: Settings, clients: dict[str, Any], **options: Any) -> Engine:
    config = {"window_per_lane": 2, "priority_aging_seconds": 60, "tenants": {"default": {}, **TENANTS}}
    return Engine(
        settings=replace(settings, scheduling=json.dumps(config)),
        ddb=clients["dynamodb"],
        sqs=clients["sqs"],
        s3=clients["s3"],
        events=clients["events"],
        **options,
    )


def job(job_id: str, shards: int = 100, **fields: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "kind": "map",
        "dataset": {"num_samples": 10 * shards},
        "sharding": {"shard_count": shards},
        "max_parallel": LANES,
        **fields,
    }


def window(engine: Engine, job_id: str) -> int:
    engine.admission.refresh()
    return engine.admission.window(engine.store.get_job(job_id))


def test_weights_split_a_saturated_fleet_two_to_one(settings: Settings, clients: dict[str, Any]) -> None:
    # GIVEN tenants weighted 2:1, each with a job bigger than its window (the fleet is saturated);
    # the clock stands still, so no job ages past another while the test runs
    engine = make(settings, clients, clock=Clock())
    engine.submit(job("v", tenant="vision"))
    engine.submit(job("s", tenant="speech"))
    # THEN their windows — and so their shares of the queue's service — stand 2:1
    assert (window(engine, "v"), window(engine, "s")) == (8, 4)
    # AND a tenant's second job splits its tenant's share instead of adding to it
    engine.submit(job("s2", tenant="speech"))
    assert (window(engine, "v"), window(engine, "s"), window(engine, "s2")) == (8, 2, 2)
    # AND the job record says whose it is
    assert engine.store.get_job("v").request.tenant == "vision"
    assert engine.store.get_job("v").request.priority is None


def test_a_job_without_a_tenant_runs_as_the_default_one(settings: Settings, clients: dict[str, Any]) -> None:
    engine = make(settings, clients)
    engine.submit(job("d"))
    assert engine.store.get_job("d").request.tenant == "default"


def test_high_priority_goes_first_and_aging_ends_the_wait(
    settings: Settings, clients: dict[str, Any]
) -> None:
    # (aging counts from the job record's created_at: a stamp of the engine's clock)
    clock = Clock()
    engine = make(settings, clients, clock=clock)
    # GIVEN a low-priority flood running
    engine.submit(job("low", 3000, priority=0))
    assert window(engine, "low") == 8
    # WHEN a high-priority job arrives
    engine.submit(job("high", 40, priority=1000))
    # THEN the flood keeps one task going and the high-priority job takes the rest of the queue
    assert (window(engine, "high"), window(engine, "low")) == (8, 1)
    # AND the flood's next top-up sends nothing more while it holds its one task
    sqs, url = clients["sqs"], engine.settings.task_queue_url
    queued = tasks_of(receive_all(sqs, url))
    low = [t for t in queued if t.job_id == "low"]
    engine.ingest([Outcome(result_for(low[0]))])
    after = tasks_of(receive_all(sqs, url))
    assert [t.job_id for t in after].count("low") == 0
    # WHEN time passes (the flood runs on; aging adds 100 points a minute, up to 1000)
    clock.now += 10 * 60 + 1
    # THEN the gap is closed: the flood is never starved; on a fleet still saturated (a backlog
    # seen) the two jobs of one tenant split its share equally again
    saturated = Admission(
        engine.store, engine.admission.scheduling, clock, backlog=lambda: 50, pace=engine.admission.pace
    )
    low_now, high_now = engine.store.get_job("low"), engine.store.get_job("high")
    assert saturated.window(low_now) == saturated.window(high_now) == 8 // 2


def test_a_quota_breach_names_quota_limit_and_use_and_creates_nothing(
    settings: Settings, clients: dict[str, Any]
) -> None:
    engine = make(settings, clients)
    engine.submit(job("a", 10, tenant="small"))
    queued = count_messages(clients["sqs"], settings.task_queue_url)
    # WHEN the tenant submits a second job over running_jobs=1
    with pytest.raises(QuotaExceeded) as caught:
        engine.submit(job("b", 10, tenant="small"))
    # THEN the error names the quota, its limit, the use and the fix; nothing was created
    message = str(caught.value)
    assert "quota running_jobs of tenant 'small' is 1: 1 job(s) running now" in message
    assert "scheduling.tenants.small.quotas.running_jobs" in message
    assert engine.store.status_of("b") is None
    assert count_messages(clients["sqs"], settings.task_queue_url) == queued
    # AND the splitter's answer is a rejection with the same words
    answer = engine.answer(job("b", 10, tenant="small"))
    assert answer["ok"] is False and "running_jobs" in answer["problems"][0]
    # AND an idempotent resubmit of the running job is not a second job
    assert engine.submit(job("a", 10, tenant="small"))["created"] is False


def test_queued_shards_quota(settings: Settings, clients: dict[str, Any]) -> None:
    engine = make(settings, clients)
    with pytest.raises(
        QuotaExceeded, match=r"quota queued_shards of tenant 'small' is 50: 0 shard\(s\) queued"
    ):
        engine.submit(job("big", 60, tenant="small"))
    assert engine.store.status_of("big") is None


def test_running_tasks_quota_caps_the_tenants_windows(settings: Settings, clients: dict[str, Any]) -> None:
    engine = make(settings, clients)
    engine.submit(job("c1", tenant="capped"))
    assert window(engine, "c1") == 3
    engine.submit(job("c2", tenant="capped"))
    assert window(engine, "c1") + window(engine, "c2") <= 3
    with pytest.raises(QuotaExceeded, match="quota running_jobs of tenant 'capped' is 2"):
        engine.submit(job("c3", tenant="capped"))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"tenant": "nobody"},
            "tenant 'nobody' is unknown: use one of capped, default, small, speech, vision",
        ),
        ({"tenant": "Vision Team"}, "tenant must be lowercase letters"),
        ({"priority": 1001}, "priority must be an integer from 0 to 1000"),
        ({"priority": -1}, "priority must be an integer from 0 to 1000"),
        ({"priority": "high"}, "priority must be an integer from 0 to 1000"),
    ],
)
def test_bad_tenant_or_priority_is_refused_with_nothing_created(
    settings: Settings, clients: dict[str, Any], fields: dict[str, Any], expected: str
) -> None:
    engine = make(settings, clients)
    with pytest.raises(ValidationError) as caught:
        engine.submit(job("bad", **fields))
    assert expected in str(caught.value)
    assert engine.store.status_of("bad") is None
    assert count_messages(clients["sqs"], settings.task_queue_url) == 0


def test_a_caller_cannot_claim_another_tenants_name(settings: Settings, clients: dict[str, Any]) -> None:
    engine = make(settings, clients)
    with pytest.raises(
        ValidationError, match="tenant 'vision' is not yours: this caller submits as tenant 'speech'"
    ):
        engine.submit(job("claim", tenant="vision"), invoked_as="speech")
    assert engine.store.status_of("claim") is None
    engine.submit(job("mine"), invoked_as="speech")
    assert engine.store.get_job("mine").request.tenant == "speech"


def test_a_job_submitted_before_tenants_existed_resubmits_as_the_same_job(
    settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a job an earlier version created: its request names no tenant
    engine = make(settings, clients)
    payload = job("old", 10)
    request = TrainingRequest.from_dict(payload)
    engine.store.create_job(JobRecord.new(request, "old", request_hash(request)))
    # WHEN the same request is submitted again THEN it is the same job, not a conflict
    assert engine.submit(payload)["created"] is False
    assert engine.store.get_job("old").request.tenant is None
