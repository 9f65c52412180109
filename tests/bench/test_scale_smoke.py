"""The scale benchmarks at a tiny size, so they do not rot (figures are not asserted, only correctness).

``benchmarks.scale`` deploys the stack into its own local cloud and runs a 40-shard map job
through it; it exits non-zero when the job does not succeed, a result item is missing, or the
manifest's parts do not list every shard exactly once. ``benchmarks.scale_manifest`` reads 300
recorded results every way it measures and checks each round summary counted them all.
"""

from __future__ import annotations

from typing import Any

from tests.bench.runner import run_benchmark


def run(module: str, *args: str) -> dict[str, Any]:
    env = {"JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    return run_benchmark(module, *args, timeout=600, env=env)


def test_scale_benchmark_runs_a_small_job_through_the_deployed_stack() -> None:
    r = run("benchmarks.scale", "--shards", "40", "--workers", "2", "--timeout", "300")
    # The run checked itself; here: the figures it reports exist and add up.
    assert r["problems"] == [] and r["job_status"] == "SUCCEEDED"
    assert r["items"]["RES"] == 40 and r["worker_tasks"] >= 40
    assert r["manifest_outputs_complete"] is True and r["manifest_schema_version"] == 2
    lambdas = r["lambdas"]
    assert lambdas["splitter"]["invocations"] >= 1 and lambdas["aggregator"]["invocations"] >= 1
    assert lambdas["aggregator"]["peak_rss_mib"] > 0 and r["ddb_write_requests"] >= 40


def test_scale_manifest_benchmark_reads_every_result_each_way() -> None:
    r = run("benchmarks.scale_manifest", "--shards", "300")
    names = [v["variant"] for v in r["variants"]]
    assert len(names) == 7 and names[0] == "manifest, schema 1 (list)"
    assert names[5:] == ["close range (paged), one of 1", "close merge of 1 digests (paged)"]
    # the one-pass manifest's part, and the close range's (named by the shards it holds)
    assert sorted(key.rsplit("/", 1)[1] for key, _ in r["parts"]) == [
        "outputs-00000.jsonl",
        "outputs-000000-000299.jsonl",
    ]
