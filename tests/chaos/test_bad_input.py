"""The bad-input corpus: malformed and hostile requests, results and tasks.

Every request is rejected by the splitter with an answer naming the field (never an
unhandled exception), leaving no job record and no message behind. Malformed and foreign
results are reported as batch item failures (so they end in the results DLQ, where the
alarm sees them) and never counted, while the good records of the same batch succeed.
Malformed tasks are never run, never answered, and never recorded as a shard outcome.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambdas import aggregator, dlq_handler, splitter
from shardq.core import operations
from shardq.core.contracts import ShardResult, TrainingRequest, ValidationError
from shardq.local.cloud import LocalCloud
from shardq.local.resources import provision
from shardq.worker.runtime import Worker
from tests.chaos.conftest import Rig
from tests.helpers import (
    TRUSTED,
    LambdaContext,
    body_event,
    count_messages,
    receive_all,
    result_for,
    tasks_of,
)

GOOD: dict[str, Any] = {
    "kind": "data_parallel",
    "dataset": {"uri": "s3://data/train.npz", "num_samples": 1000},
    "sharding": {"shard_count": 4},
    "rounds": 2,
    "hyperparameters": {"lr": 0.1},
}


def nested(depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    for _ in range(depth):
        node["x"] = {}
        node = node["x"]
    return out


def with_(**patch: Any) -> dict[str, Any]:
    return {**GOOD, **patch}


def without(*keys: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k not in keys}


SWEEP = {"kind": "sweep", "dataset": {"num_samples": 10}, "objective": {"metric": "loss"}}

# (id, payload, what the error must name)
REQUESTS: list[tuple[str, Any, str]] = [
    ("empty", {}, "kind"),
    ("not-an-object-string", "not json {", "JSON object"),
    ("not-an-object-list", [GOOD], "JSON object"),
    ("null", None, "JSON object"),
    ("missing-kind", without("kind"), "kind must be one of"),
    ("unknown-kind", with_(kind="federated"), "kind must be one of"),
    ("kind-wrong-type", with_(kind=7), "kind must be one of"),
    ("missing-dataset", without("dataset"), "dataset is required"),
    ("dataset-string", with_(dataset="s3://data"), "dataset must be a JSON object"),
    ("num-samples-string", with_(dataset={"num_samples": "1000"}), "dataset.num_samples"),
    ("num-samples-negative", with_(dataset={"num_samples": -5}), "dataset.num_samples"),
    ("num-samples-zero", with_(dataset={"num_samples": 0}), "dataset.num_samples"),
    ("num-samples-huge", with_(dataset={"num_samples": 10**20}), "dataset.num_samples"),
    ("num-samples-fraction", with_(dataset={"num_samples": 1.5}), "dataset.num_samples"),
    ("num-samples-bool", with_(dataset={"num_samples": True}), "dataset.num_samples"),
    ("dataset-uri-empty", with_(dataset={"uri": "", "num_samples": 10}), "dataset.uri"),
    ("files-and-samples", with_(dataset={"files": ["a"], "num_samples": 1}), "either num_samples or files"),
    ("files-empty", with_(dataset={"files": []}), "dataset.files"),
    ("files-not-strings", with_(dataset={"files": [1, 2]}), "dataset.files[0]"),
    ("dataset-misspelt", with_(dataset={"url": "s3://d", "num_samples": 10}), "dataset.uri"),
    ("missing-sharding", without("sharding"), "sharding is required"),
    ("shard-count-negative", with_(sharding={"shard_count": -1}), "sharding.shard_count"),
    ("shard-count-zero", with_(sharding={"shard_count": 0}), "sharding.shard_count"),
    ("shard-count-huge", with_(sharding={"shard_count": 10**6}), "sharding.shard_count"),
    (
        "shard-count-over-samples",
        with_(sharding={"shard_count": 1001}),
        "sharding.shard_count (1001) exceeds",
    ),
    ("shard-count-string", with_(sharding={"shard_count": "4"}), "sharding.shard_count"),
    (
        "count-and-size",
        with_(sharding={"shard_count": 2, "shard_size": 5}),
        "either shard_count or shard_size",
    ),
    (
        "shard-size-too-many-shards",
        with_(dataset={"num_samples": 10**9}, sharding={"shard_size": 1}),
        "sharding.shard_size",
    ),
    ("rounds-zero", with_(rounds=0), "rounds"),
    ("rounds-huge", with_(rounds=10**6), "rounds"),
    ("rounds-for-map", with_(kind="map", rounds=3), "rounds applies to kind 'data_parallel'"),
    ("max-parallel-zero", with_(max_parallel=0), "max_parallel"),
    ("max-parallel-negative", with_(max_parallel=-1), "max_parallel"),
    ("max-failed-negative", with_(max_failed_shards=-1), "max_failed_shards"),
    ("max-failed-over-tasks", with_(max_failed_shards=99), "max_failed_shards must be at most"),
    ("entrypoint-shell", with_(entrypoint="os:system; rm -rf /"), "entrypoint"),
    ("entrypoint-traversal", with_(entrypoint="../../etc:passwd"), "entrypoint"),
    ("entrypoint-number", with_(entrypoint=42), "entrypoint"),
    ("job-id-path-traversal", with_(job_id="../../etc/passwd"), "job_id"),
    ("job-id-prefix-escape", with_(job_id="job/../../other-job"), "job_id"),
    ("job-id-control-chars", with_(job_id="job\x00\n\x1b[31m"), "job_id"),
    ("job-id-unicode", with_(job_id="jöb-ü-💥"), "job_id"),
    ("job-id-rtl-override", with_(job_id="job\u202egpj"), "job_id"),
    ("job-id-too-long", with_(job_id="a" * 65), "job_id"),
    ("job-id-empty", with_(job_id=""), "job_id"),
    ("job-id-number", with_(job_id=123), "job_id"),
    ("hyperparameters-string", with_(hyperparameters="lr=0.1"), "hyperparameters"),
    ("hyperparameters-oversized", with_(hyperparameters={"blob": "x" * 300_000}), "byte limit"),
    ("hyperparameters-deeply-nested", with_(hyperparameters=nested(5000)), "hyperparameters nests"),
    ("model-deeply-nested", with_(model=nested(40)), "model nests"),
    ("model-list", with_(model=["s3://m"]), "model must be a JSON object"),
    ("init-uri-not-uri", with_(model={"init_uri": "not a uri"}), "model.init_uri"),
    ("schema-version-future", with_(schema_version=2), "schema_version"),
    ("unknown-field", with_(shards=4), "unknown field 'shards'"),
    ("search-space-on-map", with_(kind="map", rounds=1, search_space={"lr": [1]}), "search_space applies"),
    ("sweep-without-space", SWEEP, "search_space is required"),
    ("sweep-empty-grid", {**SWEEP, "search_space": {}}, "search_space grid is empty"),
    ("sweep-grid-scalar", {**SWEEP, "search_space": {"lr": 0.1}}, "search_space.lr"),
    (
        "sweep-grid-explodes",
        {**SWEEP, "search_space": {f"p{i}": list(range(10)) for i in range(10)}},
        "trials",
    ),
    (
        "sweep-direction",
        {**SWEEP, "search_space": {"lr": [1]}, "objective": {"metric": "l", "direction": "up"}},
        "objective.direction",
    ),
    (
        "sweep-with-sharding",
        {**SWEEP, "search_space": {"lr": [1]}, "sharding": {"shard_count": 2}},
        "sharding does not apply",
    ),
    ("evaluation-string", with_(evaluation="s3://data/test.npz"), "evaluation must be a JSON object"),
    ("evaluation-without-uri", with_(evaluation={"num_samples": 10}), "evaluation.uri is required"),
    ("evaluation-uri-empty", with_(evaluation={"uri": " "}), "evaluation.uri must be a non-empty string"),
    ("evaluation-misspelt", with_(evaluation={"url": "s3://d/t.npz"}), "did you mean 'evaluation.uri'?"),
    (
        "evaluation-num-samples-zero",
        with_(evaluation={"uri": "s3://d/t", "num_samples": 0}),
        "evaluation.num_samples",
    ),
    (
        "evaluation-on-map",
        with_(kind="map", rounds=1, evaluation={"uri": "s3://d/t.npz"}),
        "evaluation applies to kind 'data_parallel' only",
    ),
    ("tenant-uppercase", with_(tenant="Vision"), "tenant must be lowercase letters"),
    ("tenant-not-a-string", with_(tenant=7), "tenant must be lowercase letters"),
    ("priority-over-range", with_(priority=1001), "priority must be an integer from 0 to 1000"),
    ("priority-negative", with_(priority=-5), "priority must be an integer from 0 to 1000"),
    ("priority-float", with_(priority=2.5), "priority must be an integer from 0 to 1000"),
    ("continue-malformed", {"shardq_continue": "job-1"}, "shardq_continue.job_id"),
    ("continue-traversal", {"shardq_continue": {"job_id": "../x"}}, "shardq_continue.job_id"),
]


def nothing_left(r: Rig) -> None:
    """No job record, no outcome, no message anywhere."""
    ddb, sqs = r.clients["dynamodb"], r.clients["sqs"]
    assert ddb.scan(TableName=r.settings.job_table, Select="COUNT")["Count"] == 0
    assert count_messages(sqs, r.settings.task_queue_url) == 0
    assert count_messages(sqs, r.settings.results_queue_url) == 0


def test_corpus_is_big_enough() -> None:
    assert len(REQUESTS) >= 40
    assert len({i for i, _, _ in REQUESTS}) == len(REQUESTS)


@pytest.fixture(scope="module")
def splitter_env(cloud: LocalCloud) -> Iterator[Rig]:
    """One set of resources for the whole corpus: every request must leave it empty."""
    from lambdas import common
    from shardq.core.clients import client

    clients = {name: cloud.client(name) for name in ("sqs", "dynamodb", "s3", "events", "lambda")}
    settings = provision(clients["sqs"], clients["dynamodb"], clients["s3"])
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**cloud.env(), **settings.as_env(), "POWERTOOLS_TRACE_DISABLED": "true"}.items():
            mp.setenv(key, value)
        common.engine.cache_clear()
        client.cache_clear()
        yield Rig(cloud, settings, common.engine(), None, None, Path("."), clients)  # type: ignore[arg-type]
    common.engine.cache_clear()
    client.cache_clear()


@pytest.mark.local_cloud
@pytest.mark.parametrize(
    ("payload", "names"), [(p, n) for _, p, n in REQUESTS], ids=[i for i, _, _ in REQUESTS]
)
def test_bad_request_is_rejected_naming_the_field_and_leaves_nothing(
    splitter_env: Rig, payload: Any, names: str
) -> None:
    r = splitter_env
    answer = splitter.split(payload, LambdaContext())
    assert answer["ok"] is False, answer
    assert answer["error"] == "ValidationError"
    assert names in answer["message"], answer["message"]
    assert answer["problems"]
    nothing_left(r)


# -- property-based: the request and result readers never fail any other way ----------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
FIELD = st.sampled_from([*TrainingRequest.FIELDS, "shards", "kindd"])
REQUEST_LIKE = st.dictionaries(FIELD, JSON, max_size=8) | st.builds(
    lambda patch: {**GOOD, **patch}, st.dictionaries(FIELD, JSON, max_size=3)
)


@settings(max_examples=400, deadline=None)
@given(REQUEST_LIKE)
def test_fuzzed_requests_are_accepted_or_rejected_with_named_problems(payload: dict[str, Any]) -> None:
    try:
        request = TrainingRequest.from_dict(payload)
    except ValidationError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        return
    # accepted: it round-trips and plans at least one task
    assert TrainingRequest.from_json(request.to_json()) == request
    assert request.task_count >= 1


RESULT_FIELDS = st.sampled_from([*ShardResult.__dataclass_fields__, "extra"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(RESULT_FIELDS, JSON, max_size=10) | st.text(max_size=50))
def test_fuzzed_results_are_parsed_or_rejected_with_named_problems(raw: Any) -> None:
    body = raw if isinstance(raw, str) else json.dumps(raw)
    try:
        ShardResult.from_json(body)
    except ValidationError as exc:
        assert exc.problems


# -- results -----------------------------------------------------------------------------------


def _job(r: Rig, job_id: str = "m") -> list[Any]:
    r.engine.submit(
        {"job_id": job_id, "kind": "map", "dataset": {"num_samples": 20}, "sharding": {"shard_count": 2}}
    )
    return tasks_of(receive_all(r.clients["sqs"], r.settings.task_queue_url))


def _bad_results(tasks: list[Any]) -> dict[str, str]:
    good = result_for(tasks[0]).to_dict()
    return {
        "not-json": "{not json",
        "json-list": json.dumps([good]),
        "wrong-schema-version": json.dumps({**good, "schema_version": 9}),
        "unknown-job": json.dumps({**good, "job_id": "no-such-job"}),
        "shard-that-does-not-exist": json.dumps({**good, "shard_id": 99}),
        "round-that-does-not-exist": json.dumps({**good, "round": 5}),
        "reduce-for-a-map-job": json.dumps({**good, "task_type": "reduce", "shard_id": 0}),
        "unknown-task-type": json.dumps({**good, "task_type": "predict"}),
        "unknown-status": json.dumps({**good, "status": "ok"}),
        "metric-not-a-number": json.dumps({**good, "metrics": {"loss": "low"}}),
        "negative-samples": json.dumps({**good, "num_samples": -1}),
        "missing-job-id": json.dumps({k: v for k, v in good.items() if k != "job_id"}),
        "job-id-traversal": json.dumps({**good, "job_id": "../m"}),
        "deeply-nested": "[" * 100_000 + "]" * 100_000,
    }


@pytest.mark.local_cloud
def test_malformed_and_foreign_results_are_rejected_and_the_good_ones_counted(
    rig: Callable[..., Rig],
) -> None:
    # GIVEN a 2-shard job and a batch holding one good result among every kind of bad one
    r = rig()
    tasks = _job(r)
    bad = _bad_results(tasks)
    bodies = [result_for(tasks[0]).to_json(), *bad.values()]
    # WHEN the aggregator gets the batch
    answer = aggregator.aggregate(body_event(bodies), LambdaContext())
    # THEN every bad record that names no planned task (and only they) is reported failed; a
    # rejected body naming shard 0 would be that shard's failure (issue #22), but shard 0's good
    # result came first, so each is a duplicate; the good one is counted once
    names_shard_0 = {"unknown-status", "metric-not-a-number", "negative-samples"}
    failed = sorted(int(f["itemIdentifier"].removeprefix("m-")) for f in answer["batchItemFailures"])
    assert failed == [i + 1 for i, name in enumerate(bad) if name not in names_shard_0]
    job = r.engine.store.get_job("m")
    assert (job.ok(0, "train"), job.failed(0, "train"), job.status) == (1, 0, "RUNNING")
    assert [o.result.shard_id for o in r.engine.store.all_results("m")] == [0]
    # AND the round completes only when its real last shard arrives
    assert aggregator.aggregate(body_event([result_for(tasks[1]).to_json()]), LambdaContext()) == {
        "batchItemFailures": []
    }
    assert r.engine.store.get_job("m").status == "SUCCEEDED"


@pytest.mark.local_cloud
def test_result_for_a_finished_job_changes_neither_its_status_nor_its_manifest(
    rig: Callable[..., Rig],
) -> None:
    r = rig()
    tasks = _job(r)
    operations.cancel(r.engine, "m")
    key = "jobs/m/result.json"
    before = r.clients["s3"].get_object(Bucket=r.settings.artifact_bucket, Key=key)["Body"].read()
    late = [result_for(tasks[0]).to_json(), result_for(tasks[0]).to_json()]
    assert aggregator.aggregate(body_event(late), LambdaContext()) == {"batchItemFailures": []}
    job = r.engine.store.get_job("m")
    assert job.status == "CANCELLED"
    # the shard that was running is on record, once, kept apart as late: the ended job counts nothing
    assert job.ok(0, "train") == 0
    late_rows = r.engine.store.late_results("m")
    assert [(row.result.shard_id, row.result.status) for row in late_rows] == [(0, "succeeded")]
    assert r.clients["s3"].get_object(Bucket=r.settings.artifact_bucket, Key=key)["Body"].read() == before


# -- tasks -------------------------------------------------------------------------------------

BAD_TASKS = {
    "not-json": "<task/>",
    "wrong-schema-version": json.dumps({"schema_version": 3, "job_id": "m", "round": 0}),
    "missing-fields": json.dumps({"job_id": "m", "task_type": "train", "kind": "map"}),
    "unknown-task-type": json.dumps(
        {
            "job_id": "m",
            "round": 0,
            "shard_id": 0,
            "shard_count": 2,
            "task_type": "evaluate",
            "kind": "map",
            "entrypoint": "x:y",
            "data": {},
            "hyperparameters": {},
            "output_prefix": "s3://b/p/",
        }
    ),
}


@pytest.mark.local_cloud
def test_malformed_tasks_are_never_run_answered_or_recorded(rig: Callable[..., Rig]) -> None:
    # GIVEN a running job and malformed tasks on its queue
    r = rig(task_visibility_s=1, max_receive_count=2)
    _job(r)
    sqs = r.clients["sqs"]
    for name, body in BAD_TASKS.items():
        sqs.send_message(
            QueueUrl=r.settings.task_queue_url,
            MessageBody=body,
            MessageGroupId=name,
            MessageDeduplicationId=name,
        )
    # WHEN a worker polls them past maxReceiveCount
    w = Worker(
        allow=TRUSTED,
        sqs=sqs,
        s3=r.clients["s3"],
        ddb=r.clients["dynamodb"],
        job_table=r.settings.job_table,
        task_queue_url=r.settings.task_queue_url,
        results_queue_url=r.settings.results_queue_url,
        wait_s=1,
    )
    deadline = time.monotonic() + 30
    while count_messages(sqs, r.settings.task_queue_url):
        assert time.monotonic() < deadline, "malformed tasks never reached the DLQ"
        w.poll_once()
    # THEN it ran and answered none of them; they moved to the DLQ untouched
    assert count_messages(sqs, r.settings.results_queue_url) == 0
    dead = receive_all(sqs, r.pump.task_dlq_url)
    assert sorted(m["Body"] for m in dead) == sorted(BAD_TASKS.values())
    # AND the DLQ handler rejects each (no shard of any job is failed by a body it cannot read)
    # (a batch whose every record fails fails the invocation: Powertools raises, SQS keeps them all)
    with pytest.raises(BatchProcessingError, match=f"{len(BAD_TASKS)} individual errors"):
        dlq_handler.handle_dead_tasks(
            body_event([m["Body"] for m in dead], r.pump.arns[r.pump.task_dlq_url]), LambdaContext()
        )
    assert r.engine.store.all_results("m") == []
