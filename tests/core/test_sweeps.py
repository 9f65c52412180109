"""Sweeps as peers run them: random search and successive halving over rungs (local endpoint)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from shardq.core import planning, search
from shardq.core.contracts import TrainingRequest, ValidationError
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.settings import Settings
from tests.helpers import receive_all, result_for, tasks_of
from tests.requests import make_request


def sweep(job_id: str, **extra: Any) -> dict[str, Any]:
    """A 3×3 grid sweep minimizing ``loss``."""
    return make_request("sweep", job_id=job_id, **extra)


SPACE = {
    "lr": {"log_uniform": [1e-4, 1e-1]},
    "dropout": {"uniform": [0.0, 0.5]},
    "depth": {"int_uniform": [2, 6]},
}


def test_random_search_samples_each_dimension_in_range_deterministically() -> None:
    request = TrainingRequest.from_dict(
        sweep(
            "r",
            search_space={**SPACE, "act": ["relu", "tanh"]},
            search={"method": "random", "num_trials": 200},
        )
    )
    assert request.task_count == 200
    trials = [search.trial_params(request, i) for i in range(200)]
    assert trials == [search.trial_params(request, i) for i in range(200)]
    assert all(1e-4 <= t["lr"] <= 1e-1 and 0.0 <= t["dropout"] <= 0.5 for t in trials)
    assert {t["depth"] for t in trials} == {2, 3, 4, 5, 6}
    assert {t["act"] for t in trials} == {"relu", "tanh"}
    # log-uniform: about as many draws per decade (3 decades, 200 draws)
    per_decade = [sum(1 for t in trials if 10**-k / 10 <= t["lr"] < 10**-k) for k in (1, 2, 3)]
    assert all(40 <= n <= 95 for n in per_decade), per_decade
    # another seed, other points
    other = TrainingRequest.from_dict(
        sweep("r", search_space=SPACE, search={"method": "random", "num_trials": 5, "seed": 1})
    )
    assert search.trial_params(other, 0) != search.trial_params(request, 0)


def test_bad_sweep_fields_are_named_with_their_fix() -> None:
    with pytest.raises(ValidationError) as info:
        TrainingRequest.from_dict(
            sweep(
                "b",
                search_space={"lr": {"log_uniform": [0, 1]}, "wd": {"normal": [0, 1]}},
                search={"method": "random"},
                early_stopping={"eta": 1, "min_budget": 4, "max_budget": 4},
            )
        )
    text = str(info.value)
    for fragment in (
        'search.num_trials is required for method "random"',
        "search_space.lr.log_uniform needs low > 0",
        "search_space.wd must be a non-empty list of values or one of",
        "early_stopping.eta must be between 2 and 100",
    ):
        assert fragment in text, text
    with pytest.raises(ValidationError, match=r'is a distribution \(uniform\): set search.method "random"'):
        TrainingRequest.from_dict(sweep("g", search_space={"lr": {"uniform": [0, 1]}}))
    with pytest.raises(ValidationError, match="early_stopping applies to kind 'sweep' only"):
        TrainingRequest.from_dict(
            {
                "kind": "map",
                "dataset": {"num_samples": 4},
                "sharding": {"shard_count": 2},
                "early_stopping": {},
            }
        )


def test_successive_halving_budgets_and_survivors() -> None:
    request = TrainingRequest.from_dict(
        sweep("b", early_stopping={"eta": 3, "min_budget": 1, "max_budget": 9})
    )
    es = request.early_stopping
    assert es is not None and es.budgets == [1, 3, 9] and request.round_count == 3
    assert [es.survivors(n) for n in (9, 3, 2, 1)] == [3, 1, 1, 1]
    layout = planning.Layout("b", "b")
    # a rung trains the increment over the previous rung's budget, from the trial's model
    assert [
        planning.train_task(request, "b", layout, r, 4, None).hyperparameters["epochs"] for r in range(3)
    ] == [
        1,
        2,
        6,
    ]


def run_rung(
    engine: Engine, clients: dict[str, Any], loss: dict[int, float], fail: set[int] = frozenset()
) -> list[Any]:
    """Take the queue's tasks, report each trial's loss (or a failure), return the tasks."""
    tasks = tasks_of(receive_all(clients["sqs"], engine.settings.task_queue_url))
    outcomes = [
        Outcome(
            result_for(t, status="failed") if t.shard_id in fail else result_for(t, loss=loss[t.shard_id])
        )
        for t in tasks
    ]
    assert engine.ingest(outcomes) == []
    return tasks


def test_successive_halving_promotes_the_best_third_and_stops_the_rest(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a 9-trial grid with eta 3 over budgets 1, 3, 9 epochs; at rung 0 trial i's loss is
    # |i - 5| + 0.5 (trial 4 fails), so trials 5, 6 and 3 go on; at rung 1 trial 3 overtakes
    engine.submit(
        sweep("sh", max_failed_shards=1, early_stopping={"eta": 3, "min_budget": 1, "max_budget": 9})
    )
    rung0 = run_rung(engine, clients, {i: abs(i - 5) + 0.5 for i in range(9)}, fail={4})
    assert sorted(t.shard_id for t in rung0) == list(range(9))
    assert {t.hyperparameters["epochs"] for t in rung0} == {1}
    # WHEN rung 0 closed, THEN the best 9 // 3 = 3 succeeded trials go on, from their own models
    job = engine.store.get_job("sh")
    assert (job.round, job.expected(1, "train")) == (1, 3)
    rung1 = run_rung(engine, clients, {5: 0.4, 6: 0.3, 3: 0.2})
    assert sorted(t.shard_id for t in rung1) == [3, 5, 6]
    assert {t.hyperparameters["epochs"] for t in rung1} == {2}  # 3 epochs in all
    assert all(
        t.init_model_uri
        == f"{rung0[0].output_prefix.rsplit('/shard-', 1)[0]}/shard-{t.shard_id:06d}/model.npz"
        for t in rung1
    )
    # ... and the best of rung 1 trains the full budget
    rung2 = run_rung(engine, clients, {3: 0.1})
    assert [(t.shard_id, t.hyperparameters["epochs"]) for t in rung2] == [(3, 6)]  # 9 in all
    # THEN the job succeeded; the leaderboard ranks by the furthest rung, with each rung's history
    job = engine.store.get_job("sh")
    assert job.status == "SUCCEEDED"
    manifest = load_manifest(clients, job.result_uri)
    board = manifest["leaderboard"]
    assert [(row["trial"], row["rung"]) for row in board[:3]] == [(3, 2), (6, 1), (5, 1)]
    assert manifest["best"]["trial"] == 3
    assert [h["budget"] for h in manifest["best"]["rungs"]] == [1, 3, 9]
    es = manifest["early_stopping"]
    # epochs trained: 9 trials × 1, then 3 trials × (3 - 1), then 1 × (9 - 3); a full grid: 9 × 9
    assert (es["budget_spent"], es["budget_without_stopping"]) == (9 + 6 + 6, 81)
    # a result for a trial that was stopped is refused, not counted
    stopped = planning.train_task(
        job.request, "sh", planning.Layout(settings.artifact_bucket, "sh"), 1, 0, None
    )
    ((_, error),) = engine.ingest([Outcome(result_for(stopped))])
    assert "does not take part in round 1" in str(error)


def test_a_rung_where_every_trial_failed_fails_the_job(engine: Engine, clients: dict[str, Any]) -> None:
    engine.submit(sweep("dead", max_failed_shards=9, early_stopping={"eta": 3, "max_budget": 3}))
    run_rung(engine, clients, {}, fail=set(range(9)))
    job = engine.store.get_job("dead")
    assert job.status == "FAILED" and "no trial of rung 0 succeeded" in (job.error or "")


def test_a_later_rung_where_every_trial_diverged_ends_with_the_best_finite_trial(
    engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN a 9-trial halving sweep whose rung 0 trains finitely (trials 5, 4, 6 go on) ...
    engine.submit(sweep("div", early_stopping={"eta": 3, "min_budget": 1, "max_budget": 9}))
    run_rung(engine, clients, {i: abs(i - 5) + 0.5 for i in range(9)})
    # WHEN every promoted trial diverges at the longer budget (a common end of a high-lr trial)
    run_rung(engine, clients, {5: math.nan, 4: math.inf, 6: math.nan})
    # THEN the sweep ends SUCCEEDED (divergence is an outcome, not a failure: nothing to retry),
    # its best the best trial that stayed finite; the diverged ones rank last, never best
    job = engine.store.get_job("div")
    assert (job.status, job.error, job.failed_total) == ("SUCCEEDED", None, 0)
    manifest = load_manifest(clients, job.result_uri)
    assert manifest["status"] == "SUCCEEDED" and manifest["best"]["trial"] == 3
    assert [row["trial"] for row in manifest["leaderboard"][-3:]] == [4, 5, 6]
    assert manifest["diverged_count"] == 3


def test_a_later_rung_with_a_failed_trial_and_no_finite_one_fails_retryably(
    engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN the same sweep, where at rung 1 two trials diverge and one fails (within the budget)
    engine.submit(
        sweep("df", max_failed_shards=1, early_stopping={"eta": 3, "min_budget": 1, "max_budget": 9})
    )
    run_rung(engine, clients, {i: abs(i - 5) + 0.5 for i in range(9)})
    run_rung(engine, clients, {5: math.nan, 6: math.nan}, fail={4})
    # THEN the job fails (a retry of trial 4 may still train finitely), naming the rung
    job = engine.store.get_job("df")
    assert job.status == "FAILED" and "no trial of rung 1 succeeded" in (job.error or "")


def test_random_search_runs_its_sampled_trials(engine: Engine, clients: dict[str, Any]) -> None:
    engine.submit(sweep("rnd", search_space=SPACE, search={"method": "random", "num_trials": 6, "seed": 3}))
    tasks = tasks_of(receive_all(clients["sqs"], engine.settings.task_queue_url))
    request = engine.store.get_job("rnd").request
    assert sorted(t.shard_id for t in tasks) == list(range(6))
    for t in tasks:
        assert {k: t.hyperparameters[k] for k in SPACE} == search.trial_params(request, t.shard_id)
        assert not math.isnan(t.hyperparameters["lr"])


def load_manifest(clients: dict[str, Any], uri: str | None) -> dict[str, Any]:
    bucket, key = planning.split_s3(uri or "")
    return json.loads(clients["s3"].get_object(Bucket=bucket, Key=key)["Body"].read())
