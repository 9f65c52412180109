"""The result manifest at scale: outputs and failures in JSON Lines parts, nothing lost, O(1) summaries.

On the local cloud with the part size and the inline list lowered, so a 23-shard map job spans
several parts: the manifest keeps the first entries inline, the count, and the parts' URIs;
read back, the parts list every succeeded shard exactly once, in shard order, and every
failure; the metrics equal the list-based computation over all results.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from shardq.core import finalize
from shardq.core.artifacts import put_json
from shardq.core.engine import Engine
from shardq.core.jobstore import JobStore, JobStoreError, Outcome, ResultRecord
from shardq.core.metrics import weighted_metrics
from shardq.core.planning import split_s3
from shardq.core.settings import Settings
from tests.helpers import CountingClient, receive_all, result_for, tasks_of
from tests.requests import make_request

SHARDS = 23
FAILED = {2, 7, 8, 19}


def read_manifest(s3: Any, settings: Settings, job_id: str) -> dict[str, Any]:
    body = s3.get_object(Bucket=settings.artifact_bucket, Key=f"jobs/{job_id}/result.json")["Body"]
    return dict(json.loads(body.read()))


def read_parts(s3: Any, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for part in parts:
        bucket, key = split_s3(part["uri"])
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        lines = [json.loads(line) for line in body.decode().splitlines()]
        assert len(lines) == part["count"] and len(body) == part["bytes"]
        assert (lines[0]["shard_id"], lines[-1]["shard_id"]) == (part["first_shard"], part["last_shard"])
        rows.extend(lines)
    return rows


def report_map_job(engine: Engine, settings: Settings, sqs: Any, job_id: str) -> list[Any]:
    """A 23-shard map job, 4 of its shards failed, every result reported (out of order, in two batches)."""
    engine.submit(
        {
            "job_id": job_id,
            "kind": "map",
            "dataset": {"num_samples": SHARDS * 10},
            "sharding": {"shard_count": SHARDS},
            "max_failed_shards": len(FAILED),
        }
    )
    tasks = tasks_of(receive_all(sqs, settings.task_queue_url))
    results = [result_for(t, status="failed" if t.shard_id in FAILED else "succeeded") for t in tasks]
    # Out of order, in two batches: the manifest must not depend on arrival order.
    engine.ingest([Outcome(r) for r in results[::2]])
    engine.ingest([Outcome(r) for r in results[1::2]])
    return results


def run_map_job(engine: Engine, settings: Settings, sqs: Any, job_id: str) -> list[Any]:
    results = report_map_job(engine, settings, sqs, job_id)
    assert engine.status(job_id).status == "SUCCEEDED"
    return results


def test_map_outputs_and_failures_span_parts_and_nothing_is_lost(
    engine: Engine, settings: Settings, clients: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN parts of 5 lines and 4 entries inline
    monkeypatch.setattr(finalize, "PART_LINES", 5)
    monkeypatch.setattr(finalize, "INLINE_MAX", 4)
    # WHEN a 23-shard map job with 4 failed shards finishes
    results = run_map_job(engine, settings, clients["sqs"], "parts")
    m = read_manifest(clients["s3"], settings, "parts")
    ok = sorted(s for s in range(SHARDS) if s not in FAILED)
    # THEN the manifest is schema 2: first entries inline, the count, the parts
    assert m["schema_version"] == 2
    assert m["outputs_count"] == len(ok) == 19
    assert [o["shard_id"] for o in m["outputs"]] == ok[:4]
    assert len(m["outputs_parts"]) == 4  # 5 + 5 + 5 + 4
    # AND the parts list every succeeded shard once, in shard order, with its artifact
    outputs = read_parts(clients["s3"], m["outputs_parts"])
    assert [o["shard_id"] for o in outputs] == ok
    by_shard = {r.shard_id: r for r in results}
    for o in outputs:
        r = by_shard[o["shard_id"]]
        assert (o["artifact_uri"], o["num_samples"], o["metrics"]) == (
            r.artifact_uri,
            r.num_samples,
            r.metrics,
        )
    # AND every failure, inline and in its part
    assert m["failed_count"] == 4 and [f["shard_id"] for f in m["failed"]] == sorted(FAILED)
    failures = read_parts(clients["s3"], m["failed_parts"])
    assert [f["shard_id"] for f in failures] == sorted(FAILED)
    assert {f["error"] for f in failures} == {"CUDA out of memory"}
    # AND the metrics equal the list-based computation over all results (in the table's order)
    in_order = sorted(results, key=lambda r: r.shard_id)
    assert m["metrics"] == json.loads(json.dumps(weighted_metrics(in_order)))
    assert m["rounds"][0]["shards_succeeded"] == 19 and m["rounds"][0]["failed_shards"] == sorted(FAILED)


def test_small_map_manifest_lists_everything_inline_as_before(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN the default limits (1,000 inline, 50,000 lines a part)
    results = run_map_job(engine, settings, clients["sqs"], "small")
    m = read_manifest(clients["s3"], settings, "small")
    # THEN the inline lists are complete, as in schema 1, and one part holds the same outputs
    ok = sorted(r.shard_id for r in results if r.status == "succeeded")
    assert [o["shard_id"] for o in m["outputs"]] == ok
    assert len(m["outputs_parts"]) == 1
    assert read_parts(clients["s3"], m["outputs_parts"]) == m["outputs"]
    assert [f["shard_id"] for f in m["failed"]] == sorted(FAILED) and len(m["failed_parts"]) == 1


class PagingStore(JobStore):
    """The job store, counting the calls of the paging iterator the finisher reads outcomes with."""

    calls = 0

    def iter_results(self, job_id: str) -> Iterator[ResultRecord]:
        PagingStore.calls += 1
        for item in self._query(job_id, "RES#"):
            yield ResultRecord.from_item(item)


def test_a_paging_store_gives_the_same_manifest(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a finished job and its manifest written through the store's list
    run_map_job(engine, settings, clients["sqs"], "paged")
    listed = read_manifest(clients["s3"], settings, "paged")
    # WHEN a finisher over a store with the paging iterator writes it again
    paging = PagingStore(settings.job_table, clients["dynamodb"])
    finisher = replace(engine.finisher, store=paging)
    job = paging.get_job("paged")
    put_json(
        clients["s3"],
        settings.artifact_bucket,
        "jobs/paged/result.json",
        finisher.manifest(job, job.status, None),
    )
    # THEN the iterator was used and the manifest is the same
    assert PagingStore.calls == 1
    assert read_manifest(clients["s3"], settings, "paged") == listed


def run_to_end(
    engine: Engine,
    settings: Settings,
    sqs: Any,
    request: dict[str, Any],
    failing: frozenset[tuple[int, int]] = frozenset(),
) -> None:
    """Submit ``request`` and report every task it sends until the job ends; the train tasks of
    ``failing`` (round, shard) fail."""
    engine.submit(request)
    while engine.status(request["job_id"]).status == "RUNNING":
        tasks = tasks_of(receive_all(sqs, settings.task_queue_url))
        assert tasks, "the job stalled"
        fails = [t.task_type == "train" and (t.round, t.shard_id) in failing for t in tasks]
        engine.ingest(
            [
                Outcome(result_for(t, status="failed" if f else "succeeded"))
                for t, f in zip(tasks, fails, strict=True)
            ]
        )


class ItemCounter(CountingClient):
    """Counts the result items DynamoDB sends back to reads (query pages and batch gets)."""

    def __init__(self, real: Any) -> None:
        super().__init__(real)
        self.items = 0

    def query(self, **kwargs: Any) -> Any:
        resp = self.real.query(**kwargs)
        self.items += sum(1 for i in resp.get("Items", []) if i["sk"]["S"].startswith("RES#"))
        return resp

    def batch_get_item(self, **kwargs: Any) -> Any:
        resp = self.real.batch_get_item(**kwargs)
        self.items += sum(len(v) for v in resp.get("Responses", {}).values())
        return resp


def test_a_data_parallel_manifest_reads_failures_reduces_and_the_last_round_only(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a data-parallel job of 4 rounds × 12 shards, one shard failing in rounds 0 and 2
    rounds, shards, failing = 4, 12, frozenset({(0, 5), (2, 9)})
    request = make_request(
        "data_parallel", job_id="dp-manifest", shards=shards, rounds=rounds, max_failed_shards=len(failing)
    )
    run_to_end(engine, settings, clients["sqs"], request, failing)
    job = engine.store.get_job("dp-manifest")
    assert job.status == "SUCCEEDED"
    # WHEN its manifest is put together again, the reads counted
    counter = ItemCounter(clients["dynamodb"])
    store = JobStore(settings.job_table, counter)
    finisher = replace(engine.finisher, store=store)
    manifest = finisher.manifest(job, job.status, None)
    # THEN it is the manifest a read of every outcome gives
    everything = finalize.render_manifest(
        job,
        job.status,
        None,
        engine.store.iter_results("dp-manifest"),
        engine.store.round_summaries("dp-manifest"),
        engine.finisher._put_part,
        finalize.planning.Layout(settings.artifact_bucket, "dp-manifest"),
    )
    assert manifest == everything == read_manifest(clients["s3"], settings, "dp-manifest")
    assert [(f["round"], f["shard_id"]) for f in manifest["failed"]] == sorted(failing)
    # AND it read the failures, the reduces and the last round, not the earlier rounds' successes
    recorded = rounds * (shards + 1)
    assert counter.items == len(failing) + rounds + (shards + 1) < recorded


class Unprocessing(CountingClient):
    """DynamoDB answering a BatchGetItem's last key as unprocessed ``times`` times (as it does
    when throttled), the other keys read for real."""

    def __init__(self, real: Any, times: int) -> None:
        super().__init__(real)
        self.times = times

    def batch_get_item(self, *, RequestItems: dict[str, Any]) -> Any:
        self.counts["batch_get_item"] = self.counts.get("batch_get_item", 0) + 1
        ((table, spec),) = RequestItems.items()
        if self.times <= 0 or len(spec["Keys"]) == 0:
            return self.real.batch_get_item(RequestItems=RequestItems)
        self.times -= 1
        *asked, held = spec["Keys"]
        resp = self.real.batch_get_item(RequestItems={table: {**spec, "Keys": asked}}) if asked else {}
        return {
            "Responses": resp.get("Responses", {table: []}),
            "UnprocessedKeys": {table: {**spec, "Keys": [held]}},
        }


def test_reduce_reads_ask_again_for_unprocessed_keys_and_give_up_after_their_attempts(
    engine: Engine, settings: Settings, clients: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a data-parallel job of 3 rounds run to its end (3 reduce outcomes recorded)
    run_to_end(
        engine, settings, clients["sqs"], make_request("data_parallel", job_id="batch", shards=2, rounds=3)
    )
    monkeypatch.setattr("shardq.core.batchcalls.time.sleep", lambda s: None)
    # WHEN DynamoDB leaves a key unprocessed twice
    flaky = Unprocessing(clients["dynamodb"], times=2)
    rows = JobStore(settings.job_table, flaky).reduce_results("batch", 3)
    # THEN it is asked for again until read: every round's reduce, in round order, in 3 calls
    assert [r.result.round for r in rows] == [0, 1, 2] and flaky.counts["batch_get_item"] == 3
    # AND a key never processed is an error after the attempts, not a silent gap or a spin
    with pytest.raises(JobStoreError, match="1 keys still unprocessed after 8 BatchGetItem calls"):
        JobStore(settings.job_table, Unprocessing(clients["dynamodb"], times=99)).reduce_results("batch", 3)
