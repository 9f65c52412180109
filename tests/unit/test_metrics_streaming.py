"""Round summaries and weighted metrics in one pass: equal to the list-based figures, O(1) memory."""

from __future__ import annotations

import json
import random
import tracemalloc
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from shardq.core.contracts import ShardResult
from shardq.core.metrics import LISTED_MAX, RoundAccumulator, summarize_round, weighted_metrics


def res(shard: int, rng: random.Random) -> ShardResult:
    failed = rng.random() < 0.2
    metrics = {} if failed else {"loss": rng.random(), **({"acc": rng.random()} if shard % 3 else {})}
    return ShardResult(
        job_id="j",
        round=0,
        shard_id=shard,
        task_type="train",
        status="failed" if failed else "succeeded",
        metrics=metrics,
        num_samples=0 if failed else rng.randint(0, 50),
        duration_s=rng.random() * 10,
    )


def reference_summary(round_no: int, results: Sequence[ShardResult]) -> dict[str, Any]:
    """The list-based summary shardq computed before the one-pass fold (the reference)."""
    ok = [r for r in results if r.status == "succeeded"]
    durations = [r.duration_s for r in ok]
    metrics: dict[str, dict[str, float]] = {}
    for name in sorted({n for r in ok for n in r.metrics}):
        rows = [(r.metrics[name], r.num_samples) for r in ok if name in r.metrics]
        weight = sum(w for _, w in rows)
        mean = sum(v * w for v, w in rows) / weight if weight else sum(v for v, _ in rows) / len(rows)
        metrics[name] = {"mean": mean, "min": min(v for v, _ in rows), "max": max(v for v, _ in rows),
                         "count": float(len(rows))}  # fmt: skip
    return {
        "round": round_no,
        "shards_succeeded": len(ok),
        "shards_failed": len(results) - len(ok),
        "failed_shards": sorted(r.shard_id for r in results if r.status != "succeeded"),
        "num_samples": sum(r.num_samples for r in ok),
        "metrics": metrics,
        "duration_s": {
            "sum": sum(durations),
            "max": max(durations, default=0.0),
            "mean": sum(durations) / len(durations) if durations else 0.0,
        },
        "started_at": None,
    }


def test_one_pass_summary_equals_the_list_based_one_exactly() -> None:
    # GIVEN 2,000 results (a fifth failed, one metric missing from some), in random order
    rng = random.Random(7)
    results = [res(i, rng) for i in range(2_000)]
    rng.shuffle(results)
    # WHEN summarized from a generator (as from a paged query)
    summary = summarize_round(0, (r for r in results))
    # THEN every figure equals the list-based computation, bit for bit
    assert summary == reference_summary(0, results)
    assert weighted_metrics(iter(results)) == reference_summary(0, results)["metrics"]


def test_failed_shard_list_is_capped_at_the_lowest_ids() -> None:
    # GIVEN more failures than a summary lists, in random order
    ids = list(range(0, 3 * LISTED_MAX, 2))
    random.Random(1).shuffle(ids)
    results = [ShardResult("j", 0, i, "train", "failed") for i in ids]
    # WHEN summarized
    summary = summarize_round(0, results)
    # THEN it counts them all and lists the lowest LISTED_MAX, flagged as truncated
    assert summary["shards_failed"] == len(ids) == 1_500
    assert summary["failed_shards"] == list(range(0, 2 * LISTED_MAX, 2))
    assert summary["failed_shards_truncated"] is True
    assert "failed_shards_truncated" not in summarize_round(0, results[:10])


def test_ranges_merged_from_their_stored_state_equal_one_pass() -> None:
    # GIVEN 5,000 results in shard order (a fifth failed: more than LISTED_MAX failures)
    rng = random.Random(11)
    results = [res(i, rng) for i in range(5_000)]
    # WHEN folded in ranges of 700 shards, each range's state stored as JSON and merged in order
    merged = RoundAccumulator()
    for start in range(0, len(results), 700):
        part = RoundAccumulator()
        for r in results[start : start + 700]:
            part.add(r)
        merged.merge(RoundAccumulator.from_state(json.loads(json.dumps(part.state()))))
    # THEN the summary equals the one-pass summary: counts, lowest failed ids and truncation
    # exactly; sums to rounding (ranges are added in another order)
    one_pass = summarize_round(0, results)
    got = merged.summary(0)
    assert got["failed_shards_truncated"] is True and len(got["failed_shards"]) == LISTED_MAX
    assert {k: v for k, v in got.items() if k not in ("metrics", "duration_s")} == {
        k: v for k, v in one_pass.items() if k not in ("metrics", "duration_s")
    }
    assert got["duration_s"] == pytest.approx(one_pass["duration_s"], rel=1e-12)
    assert got["metrics"].keys() == one_pass["metrics"].keys()
    for name, figures in got["metrics"].items():
        assert figures == pytest.approx(one_pass["metrics"][name], rel=1e-12)


def peak_bytes(n: int) -> int:
    def stream() -> Iterator[ShardResult]:
        rng = random.Random(n)
        for i in range(n):
            yield res(i, rng)

    tracemalloc.start()
    try:
        summarize_round(0, stream())
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_summary_memory_does_not_grow_with_the_round() -> None:
    # GIVEN rounds of 5,000 and 50,000 results streamed one at a time
    small, large = peak_bytes(5_000), peak_bytes(50_000)
    # THEN the fold's peak memory is the same order (the failed-id heap is capped at LISTED_MAX)
    assert large < 2 * small + 64 * 1024, (small, large)
