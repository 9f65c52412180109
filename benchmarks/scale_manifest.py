"""What reading every result of a big round costs one invocation: the manifest and the round summary.

On the local cloud (``LocalCloud`` with freshly provisioned table and bucket), a ``map`` job of N
shards is created and N succeeded results are recorded through ``JobStore.record`` (the
aggregator's transactions). Then, in this process, each variant reads all N results and does
its work, with ``tracemalloc`` tracing Python's allocations (peak, reset between variants) and
the wall time taken:

* ``manifest, schema 1 (list)``: the manifest as shardq wrote it before this change —
  ``JobStore.all_results`` into a list, every output inline, one indented JSON document
  (reproduced here as the reference);
* ``manifest, schema 2 (list)``: ``Finisher.manifest`` now, over the store as it is (its
  ``all_results`` list) — outputs to JSON Lines parts;
* ``manifest, schema 2 (paged)``: the same over a store with the paging ``iter_results`` the
  finalizer asks for (``PagingStore`` below: the exact method proposed for ``JobStore``);
* ``round summary (list)``: ``summarize_round`` over ``store.results(...)`` as a list, as
  ``advance.py`` did before paging; ``round summary (paged)``: the same fold over the paging iterator;
* ``close range (paged)``: what one splitter invocation does for a big map round closed in
  ranges — ``Finisher.digest_range`` over the first ``CLOSE_RANGE_SHARDS`` shards (one key range,
  its manifest part written, a digest returned); ``close merge``: the manifest put together from
  every range's digest (the other digests are computed first, unmeasured), as the invocation that
  stores the last range does.

Figures are per run; per-result figures extrapolate linearly to 1,000,000 (labelled so).

    .venv/bin/python -m benchmarks.scale_manifest [--shards 100000]
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from benchmarks._common import describe, emit_json, machine, table
from shardq.core.advance import CLOSE_RANGE_SHARDS
from shardq.core.contracts import ShardResult, TrainingRequest
from shardq.core.engine import Engine
from shardq.core.finalize import INLINE_MAX, PART_LINES
from shardq.core.jobstore import JobRecord, JobStore, Outcome, ResultRecord
from shardq.core.metrics import summarize_round, weighted_metrics
from shardq.core.planning import Layout
from shardq.local.cloud import LocalCloud
from shardq.local.resources import provision

MILLION = 1_000_000


class PagingStore(JobStore):
    """``JobStore`` plus the paging iterator proposed for it (one query page in memory at a time)."""

    def iter_results(self, job_id: str, prefix: str = "RES#") -> Iterator[ResultRecord]:
        """Recorded outcomes under ``prefix``, in key order, page by page."""
        for item in self._query(job_id, prefix):
            yield ResultRecord.from_item(item)


def schema1_manifest(store: JobStore, job: JobRecord, s3: Any, bucket: str) -> int:
    """The manifest as shardq wrote it before (every output inline, indented JSON); returns its bytes."""
    rows = store.all_results(job.job_id)
    train = [row.result for row in rows if row.result.task_type == "train"]
    outputs = [
        {"shard_id": r.shard_id, "artifact_uri": r.artifact_uri, "num_samples": r.num_samples,
         "metrics": r.metrics}
        for r in sorted(train, key=lambda r: r.shard_id)
        if r.status == "succeeded"
    ]  # fmt: skip
    manifest = {"job_id": job.job_id, "outputs": outputs, "metrics": weighted_metrics(train), "failed": []}
    body = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
    s3.put_object(Bucket=bucket, Key=Layout(bucket, job.job_id).key("result-v1.json"), Body=body)
    return len(body)


def measure(name: str, fn: Callable[[], Any]) -> dict[str, Any]:
    """Run ``fn`` once under tracemalloc: its peak Python allocations, wall time and this process's
    CPU time (the client's share: parsing pages, building records, JSON; the rest of the wall
    time is the local cloud answering, on the same 2 cores)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    started, cpu = time.perf_counter(), time.process_time()
    out = fn()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"variant": name, "seconds": round(seconds, 2), "cpu_s": round(cpu, 2),
            "peak_mib": round(peak / 2**20, 1), "out": out}  # fmt: skip


def fill(store: JobStore, job_id: str, shards: int) -> float:
    """Record ``shards`` succeeded results the way the aggregator does; returns seconds taken."""
    started = time.perf_counter()
    layout_prefix = f"s3://bench/jobs/{job_id}/round-0000"
    for lo in range(0, shards, 990):
        batch = [
            Outcome(
                ShardResult(
                    job_id=job_id, round=0, shard_id=s, task_type="train", status="succeeded",
                    metrics={"score": 1.0}, num_samples=1, artifact_uri=f"{layout_prefix}/shard-{s:06d}/",
                    worker_id="scale-0",
                )
            )
            for s in range(lo, min(shards, lo + 990))
        ]  # fmt: skip
        store.record(batch)
    return time.perf_counter() - started


def run(shards: int) -> dict[str, Any]:
    with LocalCloud() as cloud:
        clients = {n: cloud.client(n) for n in ("sqs", "dynamodb", "s3", "events")}
        settings = provision(clients["sqs"], clients["dynamodb"], clients["s3"])
        engine = Engine(settings=settings, ddb=clients["dynamodb"], sqs=clients["sqs"], s3=clients["s3"],
                        events=clients["events"])  # fmt: skip
        request = TrainingRequest.from_dict(
            {"job_id": "scale-manifest", "kind": "map", "dataset": {"num_samples": shards},
             "sharding": {"shard_count": shards}, "entrypoint": "benchmarks.e2e:noop"}
        )  # fmt: skip
        job, _ = engine.store.create_job(JobRecord.new(request, "scale-manifest", "x"))
        fill_s = fill(engine.store, job.job_id, shards)
        paging = PagingStore(settings.job_table, clients["dynamodb"])
        paged = replace(engine.finisher, store=paging)
        bucket = settings.artifact_bucket

        def v2(finisher: Any) -> Callable[[], int]:
            def go() -> int:
                manifest = finisher.manifest(job, "SUCCEEDED", None)
                return len(json.dumps(manifest, indent=2, sort_keys=True, default=str).encode())

            return go

        train0 = "RES#r0000#train#"
        rows = [
            measure("manifest, schema 1 (list)",
                    lambda: schema1_manifest(engine.store, job, clients["s3"], bucket)),
            measure("manifest, schema 2 (list)", v2(engine.finisher)),
            measure("manifest, schema 2 (paged)", v2(paged)),
            measure("round summary (list)",
                    lambda: summarize_round(0, [r.result for r in engine.store.results(job.job_id, 0)])),
            measure("round summary (paged)",
                    lambda: summarize_round(0, (r.result for r in paging.iter_results(job.job_id, train0)))),
        ]  # fmt: skip
        rows += close_in_ranges(engine, job, shards)
        listing = clients["s3"].list_objects_v2(Bucket=bucket, Prefix=f"jobs/{job.job_id}/manifest/")
        parts = [(o["Key"], o["Size"]) for o in listing.get("Contents", [])]
    for row in rows:
        if isinstance(row["out"], dict):  # a round summary: check it counted every shard
            assert row["out"]["shards_succeeded"] == shards, row["out"]
            row["out"] = None
    return {"shards": shards, "fill_s": round(fill_s, 1), "variants": rows, "parts": parts,
            "inline_max": INLINE_MAX, "part_lines": PART_LINES}  # fmt: skip


def close_in_ranges(engine: Engine, job: JobRecord, shards: int) -> list[dict[str, Any]]:
    """One range's digest (measured), every other range's (not), then the merge (measured)."""
    size = min(CLOSE_RANGE_SHARDS, shards)
    ranges = [(k, k * size, min((k + 1) * size, shards) - 1) for k in range((shards + size - 1) // size)]
    digests: list[dict[str, Any]] = []

    def one_range() -> int:
        digests.append(engine.finisher.digest_range(job, 0, *ranges[0]))
        return len(json.dumps(digests[0]).encode())

    first = {**measure("close range (paged), one of " + str(len(ranges)), one_range), "results": size}
    digests += [engine.finisher.digest_range(job, 0, *r) for r in ranges[1:]]
    assert sum(d["round"]["succeeded"] for d in digests) == shards

    def merge() -> int:
        manifest = engine.finisher.manifest(job, "SUCCEEDED", None, digests)
        assert manifest["outputs_count"] == shards
        return len(json.dumps(manifest, indent=2, sort_keys=True, default=str).encode())

    return [first, {**measure(f"close merge of {len(digests)} digests (paged)", merge), "results": None}]


def linear_mib(variant: dict[str, Any], n: int) -> str | int:
    """A list variant's peak memory scaled to 1M results; a paged one's does not grow."""
    return "bounded" if "paged" in variant["variant"] else round(variant["peak_mib"] * MILLION / n)


def report(r: dict[str, Any]) -> None:
    """The variants side by side, with per-result figures and their linear extrapolation to 1M.

    A paged variant's memory does not grow with N (two query pages and one part file at most),
    so it is not extrapolated.
    """
    n = r["shards"]
    print(f"\nreading {n:,} recorded results in one process (recorded in {r['fill_s']} s)")
    rows = []
    for v in r["variants"]:
        size = f"{v['out']:,}" if isinstance(v["out"], int) else "—"
        read = v.get("results", n)  # a close range reads its own shards; a merge reads none
        per_result = round(v["cpu_s"] * 1e6 / read) if read else "—"
        at_million = round(v["cpu_s"] * MILLION / read) if read else "—"
        rows.append([v["variant"], v["seconds"], v["cpu_s"], per_result, v["peak_mib"], size,
                     at_million, linear_mib(v, n)])  # fmt: skip
    heads = ["variant", "wall s", "client CPU s", "CPU µs/result", "peak MiB (tracemalloc)", "manifest bytes"]
    heads += ["CPU s at 1M (linear)", "MiB at 1M (linear)"]
    print(table(heads, rows))
    print(f"part files: {len(r['parts'])}, {sum(s for _, s in r['parts']):,} bytes")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=100_000)
    args = parser.parse_args(argv)
    result = {**run(args.shards), "machine": machine()}
    print(describe(result["machine"]))
    report(result)
    emit_json("scale_manifest", result)
    return result


if __name__ == "__main__":
    main()
