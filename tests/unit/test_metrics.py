"""Aggregation math: weighted means, leaderboards, reduce inputs."""

from __future__ import annotations

import pytest

from shardq.core.contracts import Objective, ShardResult
from shardq.core.metrics import leaderboard, reduce_inputs, summarize_round, weighted_metrics


def res(shard: int, n: int, status: str = "succeeded", **metrics: float) -> ShardResult:
    return ShardResult(
        job_id="j",
        round=0,
        shard_id=shard,
        task_type="train",
        status=status,  # type: ignore[arg-type]
        metrics=metrics,
        num_samples=n,
        artifact_uri=f"s3://b/{shard}" if status == "succeeded" else None,
        duration_s=float(shard + 1),
    )


def test_weighted_mean_by_num_samples_ignores_failed_shards() -> None:
    results = [res(0, 100, loss=1.0), res(1, 300, loss=2.0), res(2, 0, "failed")]
    m = weighted_metrics(results)["loss"]
    assert m["mean"] == pytest.approx((100 * 1.0 + 300 * 2.0) / 400)
    assert (m["min"], m["max"], m["count"]) == (1.0, 2.0, 2.0)


def test_zero_weights_fall_back_to_plain_mean() -> None:
    assert weighted_metrics([res(0, 0, acc=0.2), res(1, 0, acc=0.4)])["acc"]["mean"] == pytest.approx(0.3)


def test_round_summary_counts_and_lists_failures() -> None:
    summary = summarize_round(2, [res(0, 10, loss=1.0), res(1, 0, "failed"), res(2, 30, loss=3.0)])
    assert summary["shards_succeeded"] == 2
    assert summary["failed_shards"] == [1]
    assert summary["num_samples"] == 40
    assert summary["metrics"]["loss"]["mean"] == pytest.approx(2.5)


@pytest.mark.parametrize(("direction", "best"), [("minimize", 1), ("maximize", 2)])
def test_leaderboard_orders_by_objective(direction: str, best: int) -> None:
    results = [res(0, 1, loss=0.5), res(1, 1, loss=0.1), res(2, 1, loss=0.9), res(3, 1, acc=1.0)]
    board = leaderboard(results, Objective("loss", direction), [{"lr": i} for i in range(4)])  # type: ignore[arg-type]
    assert board[0]["trial"] == best
    assert board[0]["hyperparameters"] == {"lr": best}
    assert board[-1]["trial"] == 3  # no objective metric: ranked last


def test_reduce_inputs_list_succeeded_models_with_weights() -> None:
    inputs = reduce_inputs([res(1, 20, loss=1), res(0, 10, loss=1), res(2, 0, "failed")])
    assert [m["shard_id"] for m in inputs["models"]] == [0, 1]
    assert inputs["total_samples"] == 30
