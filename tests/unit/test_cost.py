"""The cost model (``shardq.core.cost``): lanes, the plane's timing, the alternatives, the price book."""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest

from shardq.core import cost
from shardq.core.contracts import TrainingRequest
from shardq.core.cost import Assumptions, JobShape, compare, estimate

ROOT = Path(__file__).resolve().parents[2]


def assigned(path: Path, name: str) -> object:
    """The literal a module assigns to ``name`` at top level or as a class field default."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == name and node.value:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in {path}")


def test_copied_constants_agree_with_the_stack_and_the_worker() -> None:
    # The core may import neither the stack nor the worker: these copies are checked instead.
    assert assigned(ROOT / "stacks" / "shardq_stack.py", "RESULTS_BATCH_SIZE") == cost.AGGREGATOR_BATCH
    assert assigned(ROOT / "shardq" / "worker" / "runtime.py", "wait_s") == cost.LONG_POLL_S
    lease = assigned(ROOT / "shardq" / "worker" / "lease.py", "DEFAULT_LEASE_S")
    assert lease == cost.Assumptions.visibility_seconds
    stack = (ROOT / "stacks" / "shardq_stack.py").read_text()
    assert (
        f'"SHARDQ_FANOUT_IN_FLIGHT": "{cost.FANOUT_IN_FLIGHT_HIGH_THROUGHPUT}" if config.fifo_high_throughput'
        in stack
    )


def test_assumed_function_sizes_and_concurrency_are_the_stacks_defaults() -> None:
    functions = (ROOT / "stacks" / "components" / "functions.py").read_text()
    a = Assumptions()
    for name, mb, seconds in (
        ("splitter", a.splitter_mb, a.splitter_timeout_s),
        ("aggregator", a.aggregator_mb, None),
    ):
        m = re.search(
            rf"{name}: FunctionSize = .*?FunctionSize\(memory_mb=(\d+), timeout_seconds=(\d+)\)", functions
        )
        assert m, name
        assert int(m.group(1)) == mb
        assert seconds is None or int(m.group(2)) == seconds
    config = (ROOT / "stacks" / "config.py").read_text()
    m = re.search(r"aggregator_max_concurrency: int = _key\(\s*default=(\d+)", config)
    assert m and int(m.group(1)) == a.aggregator_concurrency


def test_the_price_book_names_a_source_for_every_figure_and_no_url() -> None:
    book = cost.price_book()
    assert book["region"] == "us-east-1" and re.fullmatch(r"\d{4}-\d{2}-\d{2}", book["checked"])
    for section in ("prices", "limits"):
        for name, entry in book[section].items():
            assert isinstance(entry["value"], int | float) and entry["value"] >= 0, name
            assert entry["source"] and "http" not in entry["source"] and "www." not in entry["source"], name


def test_workers_beyond_max_parallel_only_poll_and_are_warned_about() -> None:
    # GIVEN 640 tasks of 100 s in 64 lanes
    job = JobShape(kind="map", tasks_per_round=640, max_parallel=64)
    fits = estimate(job, Assumptions(workers=64, task_seconds=100, visibility_seconds=900))
    # WHEN twice the workers poll
    over = estimate(job, Assumptions(workers=128, task_seconds=100, visibility_seconds=900))
    # THEN the wall time is the same 10 waves of 64 (a lane runs one task at a time) ...
    assert fits["min_wall_seconds"] == over["min_wall_seconds"] == 10 * 100
    assert fits["parallel_tasks"] == over["parallel_tasks"] == 64
    # ... the extra 64 workers long-poll the whole 1,000 s (20 s each): 64 x 50 empty receives
    assert over["sqs"]["worker_idle_polls"] - fits["sqs"]["worker_idle_polls"] == 64 * 1000 // 20
    assert fits["warnings"] == []
    assert len(over["warnings"]) == 1 and "max_parallel 64" in over["warnings"][0]
    # AND fewer workers than lanes are the limit themselves
    under = estimate(job, Assumptions(workers=32, task_seconds=100))
    assert under["min_wall_seconds"] == 20 * 100 and under["parallel_tasks"] == 32


def test_aggregator_batches_are_recorded_in_transactions_of_99() -> None:
    # GIVEN one wave of 100 results: one aggregator batch of 100 = 2 transactions (99 + 1)
    job = JobShape(kind="map", tasks_per_round=100, max_parallel=100, request_bytes=200)
    e = estimate(job, Assumptions(workers=100, task_seconds=10))
    assert e["lambda"]["aggregator_invocations"] == 1
    assert cost.dynamodb_units(job, cost.aggregator_batches(job, Assumptions(workers=100)))[
        "counter_transactions"
    ] == math.ceil(100 / 99)


def test_every_write_of_the_job_record_is_written_again_to_the_by_status_index() -> None:
    # GIVEN the stack's by_status index keyed on what the job record carries, projecting all of it
    store = (ROOT / "stacks" / "components" / "job_store.py").read_text()
    status_index = store[store.index("index_name=STATUS_INDEX") : store.index("index_name=RECORDED_INDEX")]
    assert '"status"' in status_index and '"created_at"' in status_index
    assert "ProjectionType.ALL" in status_index
    record = (ROOT / "shardq" / "core" / "store" / "records.py").read_text()
    assert '"status": self.status' in record and '"created_at": self.created_at' in record
    # WHEN 100 map results are recorded from 10 waves of 10: a job record of 1 KB, then one of 3 KB
    a = Assumptions(workers=10, task_seconds=250)
    small = JobShape(kind="map", tasks_per_round=100, max_parallel=10, request_bytes=200)
    large = JobShape(kind="map", tasks_per_round=100, max_parallel=10, request_bytes=2_000)
    units = {
        job.request_bytes: cost.dynamodb_units(job, cost.aggregator_batches(job, a)) for job in (small, large)
    }
    # THEN the record's writes (create, 10 counter transactions, 1 cursor, 3 finalize updates)
    # are each written to the index at the record's size, plus one as its status leaves RUNNING
    assert units[200]["status_index_write_units"] == (1 + 10 + 1 + 3 + 1) * 1
    assert units[2_000]["status_index_write_units"] == (1 + 10 + 1 + 3 + 1) * 3
    # AND they are in the total
    without = units[200]["write_request_units"] - units[200]["status_index_write_units"]
    assert without == 1 + 2 * (100 + 10) + 100 + 4 + 1


def test_enqueue_time_follows_the_queue_mode() -> None:
    job = JobShape(kind="map", tasks_per_round=1_000_000, max_parallel=10_000)
    plain = cost.plane_timing(job, Assumptions())
    high = cost.plane_timing(job, Assumptions(high_throughput=True, splitter_cpu_ms_per_call=0))
    # plain FIFO: the quota, 300 SendMessageBatch calls/s = 3,000 msg/s
    assert plain["enqueue_seconds_per_round"] == pytest.approx(1_000_000 / 3_000)
    # high-throughput FIFO: the regional ceiling (70,000 calls/s) is far above what one
    # splitter's 32 calls in flight offer at 20 ms each (1,600 calls/s) ...
    assert high["enqueue_messages_per_second"] == pytest.approx(32 / 0.020 * 10)
    # ... and by default the 512 MB splitter's CPU (0.9 ms a call on 0.29 vCPU) binds before that
    default = cost.plane_timing(job, Assumptions(high_throughput=True))
    assert default["enqueue_bound"] == "splitter CPU (0.29 vCPU)"
    assert default["enqueue_messages_per_second"] == pytest.approx(512 / 1769 / 0.0009 * 10)
    # counting: 5 aggregators x 100 results per 200 ms, under the counter item's 99 per 25 ms
    assert plain["count_results_per_second"] == pytest.approx(min(5 * 100 / 0.2, 99 / 0.025))
    # a fan-out past one splitter invocation (120 s, handing off 20 s early) continues in new ones
    lam = cost.lambda_usage(job, Assumptions(), batches=1)
    assert lam["splitter_invocations"] == math.ceil((1_000_000 / 3_000) / 100)


def test_a_big_map_round_pays_for_its_close_in_ranges() -> None:
    # GIVEN map rounds below, at and above one close range (10,000 shards), and a data_parallel one
    a = Assumptions()
    usage = {
        n: cost.lambda_usage(JobShape(kind="map", tasks_per_round=n), a, batches=0) for n in (10_000, 100_000)
    }
    dp = cost.lambda_usage(JobShape(kind="data_parallel", tasks_per_round=100_000), a, batches=0)
    # THEN only the big map round has range invocations: one per 10,000 shards, in the total
    assert usage[10_000]["close_range_invocations"] == 0 and dp["close_range_invocations"] == 0
    big = usage[100_000]
    assert big["close_range_invocations"] == 10
    assert big["invocations"] == big["splitter_invocations"] + 10
    # AND their GB-seconds: every result read once at 231 µs on the 512 MB splitter's 0.29 vCPU
    close_gb_s = 100_000 * 231e-6 / (512 / 1769) * 0.5
    fanout_only = cost.lambda_usage(JobShape(kind="data_parallel", tasks_per_round=100_000, rounds=1), a, 0)
    assert big["gb_seconds"] - fanout_only["gb_seconds"] == pytest.approx(close_gb_s)


def test_compare_counts_transitions_array_jobs_and_overheads_by_hand() -> None:
    # GIVEN 25,000 shards of 600 s, one round, 1,000 workers in 1,000 lanes
    job = JobShape(kind="map", tasks_per_round=25_000, max_parallel=1_000)
    c = compare(job, Assumptions(workers=1_000, task_seconds=600, batch_child_overhead_s=30))
    shardq, sfn, batch = c["options"]
    # Step Functions: per shard one transition to start the child + one Task state; + Map + start
    transitions = 25_000 * 2 + 2
    assert sfn["lines"][0]["count"] == transitions
    assert sfn["coordination_usd"] == pytest.approx(transitions * 0.025 / 1000)
    assert sfn["wall_seconds"] == 25 * 600
    assert any("300 s" in n for n in sfn["notes"])  # Express children cannot hold a 600 s shard
    # Batch: 3 array jobs (10,000 children at most), no fee, a 30 s container start per shard
    assert batch["lines"][0]["count"] == 3 and batch["coordination_usd"] == 0
    assert batch["overhead_gpu_hours"] == pytest.approx(25_000 * 30 / 3600)
    assert batch["wall_seconds"] == 25 * (600 + 30)
    # shardq: its own estimate without the artifacts, which every option pays alike
    e = estimate(job, Assumptions(workers=1_000, task_seconds=600))
    s3 = sum(line["usd"] for line in e["lines"] if line["item"].startswith("S3 "))
    assert shardq["coordination_usd"] == pytest.approx(e["total_usd"] - s3)
    assert [o["total_usd"] - o["coordination_usd"] for o in c["options"]] == [pytest.approx(s3)] * 3


def test_compare_notes_a_round_past_its_kinds_request_cap() -> None:
    # GIVEN what-if shapes at and past the caps a request is validated against
    def notes(kind: str, tasks: int) -> list[str]:
        return compare(JobShape(kind=kind, tasks_per_round=tasks), Assumptions())["options"][0]["notes"]

    # THEN a map round of a million is within its cap; one more, or a data_parallel round past
    # 10,000, is named with the cap that a real request would hit
    assert not any("validated up to" in n for n in notes("map", 1_000_000))
    assert any(
        "a map request is validated up to 1,000,000 tasks per round" in n for n in notes("map", 1_000_001)
    )
    assert not any("validated up to" in n for n in notes("data_parallel", 10_000))
    assert any("data_parallel request is validated up to 10,000" in n for n in notes("data_parallel", 10_001))


def test_a_cpu_bound_splitter_is_named_as_the_bound() -> None:
    # GIVEN a splitter whose calls take 1 ms of CPU each, at the stack's 512 MB (0.29 vCPU)
    a = Assumptions(splitter_cpu_ms_per_call=1.0, high_throughput=True)
    bounds = cost.dispatch_bounds(a)
    # THEN it, not the queue's 70,000 calls/s nor 32 in flight (1,600 calls/s), paces the fan-out
    assert bounds["splitter CPU (0.29 vCPU)"] == pytest.approx(512 / 1769 / 0.001)
    job = JobShape(kind="map", tasks_per_round=100_000, max_parallel=1000)
    plane = cost.plane_timing(job, a)
    assert plane["enqueue_bound"] == "splitter CPU (0.29 vCPU)"
    # AND one vCPU (1,769 MB) is as far as more memory goes: one Python process, one core
    big = cost.dispatch_bounds(
        Assumptions(splitter_cpu_ms_per_call=1.0, high_throughput=True, splitter_mb=10240)
    )
    assert big["splitter CPU (1.00 vCPU)"] == pytest.approx(1000)


def test_the_cost_figures_in_the_readme_and_benchmarks_are_the_models() -> None:
    # A figure in the docs is the model's on the code as it is: change the model, re-run the
    # commands BENCHMARKS.md section 7 and the README's Cost section show, and update them.
    payload = json.loads((ROOT / "examples" / "requests" / "data_parallel.json").read_text())
    shape = JobShape.from_request(TrainingRequest.from_dict(payload))
    readme = (ROOT / "README.md").read_text()
    bench = (ROOT / "BENCHMARKS.md").read_text()
    # GIVEN the README's round: 10,000 shards of 600 s on 100 workers in 100 lanes
    job = replace(shape, tasks_per_round=10_000, rounds=1, max_parallel=100)
    e = estimate(job, Assumptions(workers=100, task_seconds=600))
    fifo = (
        f"| {e['sqs']['task_queue_requests']:,} | ${e['costs_usd']['SQS FIFO requests (task queue)']:.2f} |"
    )
    assert fifo in readme and f"| **total** | | **${e['total_usd']:.2f}** |" in readme
    # AND section 7's rows: 1,000 workers in 1,000 lanes
    a = Assumptions(workers=1000, task_seconds=600)
    for shards in (1_000, 100_000, 1_000_000):
        job = replace(shape, tasks_per_round=shards, rounds=1, max_parallel=1000)
        sqs = estimate(job, a)["sqs"]
        counts = (sqs["task_queue_requests"], sqs["heartbeats"], sqs["results_queue_requests"])
        assert f"| {shards:,} | " + " | ".join(f"{n:,}" for n in counts) + " |" in bench, shards
        usd = compare(job, a)["options"][0]["coordination_usd"]
        total = f"${usd:.3f}" if usd < 1 else f"${usd:,.2f}"
        assert f"| {shards:,} | shardq | {total} | ${usd / shards * 1000:.3f} |" in bench, shards
