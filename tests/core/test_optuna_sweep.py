"""Optuna sweeps (``search.method "optuna"``) on the local cloud: the real engine, queues and table.

The aggregator draws each trial without Optuna (``shardq.core.optuna_search``); the "worker" here
asks the sampler with the worker's own code (``shardq.worker.optuna_sampler.resolve_task``, what
``shardq.worker.runtime`` calls) and reports the asked params with a scripted objective. One test
runs the real worker runtime on a real model (``examples.linear``).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

optuna = pytest.importorskip(
    "optuna", reason="optuna is optional: make optuna installs it", exc_type=ImportError
)
# On the test's clock: no prefetch, whatever the load (see ``tests.core.test_asha``).
pytestmark = [
    pytest.mark.filterwarnings("ignore:The value nan is not acceptable"),
    pytest.mark.controlled_clock,
]

from shardq.core import operations  # noqa: E402
from shardq.core.contracts import ShardResult, ShardTask, ValidationError  # noqa: E402
from shardq.core.engine import Engine  # noqa: E402
from shardq.core.jobstore import Outcome  # noqa: E402
from shardq.core.optuna_search import TRIAL_KEY  # noqa: E402
from shardq.worker import optuna_sampler  # noqa: E402
from shardq.worker.optuna_sampler import distributions  # noqa: E402
from tests.helpers import receive_all, result_for, tasks_of  # noqa: E402
from tests.requests import make_request  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SPACE: dict[str, Any] = {
    "lr": {"log_uniform": [1e-4, 1e-1]},
    "l2": {"uniform": [0.0, 0.1]},
    "act": ["relu", "tanh"],
}


def optuna_sweep(
    job_id: str, *, trials: int = 12, max_parallel: int = 3, sampler: str = "tpe", **extra: Any
) -> dict:
    fields: dict[str, Any] = {
        "search_space": SPACE,
        "search": {"method": "optuna", "sampler": sampler, "num_trials": trials, "seed": 11},
        "max_parallel": max_parallel,
        **extra,
    }
    return make_request("sweep", job_id=job_id, **fields)


def loss_of(params: dict[str, Any]) -> float:
    """A scripted objective over the asked params (best near lr 1e-2, l2 0)."""
    return (math.log10(params["lr"]) + 2) ** 2 + params["l2"] + (0.2 if params["act"] == "tanh" else 0.0)


def manifest_of(engine: Engine, clients: dict[str, Any], job_id: str) -> dict[str, Any]:
    bucket, key = (engine.store.get_job(job_id).result_uri or "").removeprefix("s3://").split("/", 1)
    return dict(json.loads(clients["s3"].get_object(Bucket=bucket, Key=key)["Body"].read()))


def take(engine: Engine, clients: dict[str, Any]) -> list[ShardTask]:
    return tasks_of(receive_all(clients["sqs"], engine.settings.task_queue_url, max_empty=1))


def ask(task: ShardTask) -> tuple[ShardTask, dict[str, Any]]:
    """The worker's step before training: ask the sampler (``runtime`` calls the same function)."""
    resolved, asked = optuna_sampler.resolve_task(task)
    assert asked is not None and TRIAL_KEY not in resolved.hyperparameters
    return resolved, asked


def report(
    engine: Engine, task: ShardTask, params: dict[str, Any], loss: float | None, status: str = "succeeded"
) -> None:
    result = replace(result_for(task, status=status, loss=loss), params=params)
    if status == "diverged":
        result = replace(result, status="succeeded", metrics={"loss": math.nan})
    assert engine.ingest([Outcome(result)]) == []


def in_process(
    order: list[int], trials: int, parallel: int, values: dict[int, float | None]
) -> list[dict[str, Any]]:
    """Optuna's own loop with the same seed: ``parallel`` asked, then per completion a tell and an ask."""
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=11))
    dists = distributions(SPACE)
    asked = {}
    for _ in range(parallel):
        t = study.ask(dists)
        asked[t.number] = t
    for n in order:
        value = values[n]
        if value is None:
            study.tell(asked[n], state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(asked[n], value)
        if len(asked) < trials:
            t = study.ask(dists)
            asked[t.number] = t
    return [asked[n].params for n in sorted(asked)]


def run_to_end(
    engine: Engine, clients: dict[str, Any], value_of: Any = None, limit: int = 100
) -> dict[int, dict]:
    """Ask and report every task the sweep sends, one result at a time; returns trial → params."""
    value_of = value_of or (lambda task, params: loss_of(params))
    params_of: dict[int, dict[str, Any]] = {}
    queue: list[ShardTask] = []
    for _ in range(limit):
        queue += take(engine, clients)
        if not queue:
            return params_of
        task, params = ask(queue.pop(0))
        params_of[task.shard_id] = params
        value = value_of(task, params)
        status = "diverged" if value is not None and math.isnan(value) else "succeeded"
        report(engine, task, params, value, status)
    raise AssertionError("the sweep did not end")


def test_an_optuna_sweep_asks_what_optuna_asks_in_process_and_ranks_the_asked_params(
    engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN a 12-trial TPE sweep, 3 in flight, trials reported in the order they were sent
    engine.submit(optuna_sweep("op1"))
    order: list[int] = []
    values: dict[int, float | None] = {}

    def value_of(task: ShardTask, params: dict[str, Any]) -> float:
        order.append(task.shard_id)
        values[task.shard_id] = loss_of(params)
        return values[task.shard_id]

    asked = run_to_end(engine, clients, value_of)
    # THEN it ends SUCCEEDED after exactly num_trials trials ...
    job = engine.store.get_job("op1")
    assert job.status == "SUCCEEDED", job.error
    assert sorted(asked) == list(range(12))
    # ... each trial is what Optuna's own loop asks with the same seed and the same completions
    assert [asked[n] for n in range(12)] == in_process(order, 12, 3, values)
    # ... and the manifest ranks the params the sampler asked
    manifest = manifest_of(engine, clients, "op1")
    best = min(range(12), key=lambda n: values[n] or math.inf)
    assert manifest["best"]["trial"] == best and manifest["best"]["hyperparameters"] == asked[best]
    assert all(row["hyperparameters"] == asked[row["trial"]] for row in manifest["leaderboard"])


def test_diverged_and_failed_trials_are_told_once_as_failures(
    engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN trial 1 diverges (NaN objective) and trial 2 fails; its result arrives twice
    engine.submit(optuna_sweep("op2", trials=6, max_failed_shards=1))
    t0, t1, t2 = (ask(t) for t in sorted(take(engine, clients), key=lambda t: t.shard_id))
    report(engine, t0[0], t0[1], 0.5)
    report(engine, t1[0], t1[1], math.nan, "diverged")
    failed = replace(result_for(t2[0], status="failed"), params=t2[1])
    assert engine.ingest([Outcome(failed)]) == []
    assert engine.ingest([Outcome(failed)]) == []  # a duplicate: recorded once, told once
    run_to_end(engine, clients)
    assert engine.store.get_job("op2").status == "SUCCEEDED"
    # THEN the draws told trial 0 complete, 1 and 2 fail, each exactly once
    tells = [
        e
        for d in engine.store.sweep_decisions("op2")
        for e in d.params[TRIAL_KEY]["events"]
        if e[0] == "tell"
    ]
    by_trial = {}
    for e in tells:
        by_trial.setdefault(e[1], []).append(e[2])
    assert by_trial[0] == ["complete"] and by_trial[1] == ["fail"] and by_trial[2] == ["fail"]
    assert all(len(v) == 1 for v in by_trial.values())


def test_cancel_sends_no_new_trial(engine: Engine, clients: dict[str, Any]) -> None:
    engine.submit(optuna_sweep("op3"))
    first = take(engine, clients)
    task, params = ask(first[0])
    operations.cancel(engine, "op3")
    report(engine, task, params, 1.0)
    assert take(engine, clients) == []
    assert engine.store.get_job("op3").status == "CANCELLED"
    assert len(engine.store.sweep_decisions("op3")) == 3


def test_a_retried_trial_trains_the_params_it_was_asked_and_the_sweep_goes_on(
    engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN a sweep with no failure budget whose trial 0 fails: the job FAILS
    engine.submit(optuna_sweep("op7", trials=4, max_parallel=1))
    (first,) = take(engine, clients)
    task, params = ask(first)
    report(engine, task, params, None, "failed")
    assert engine.store.get_job("op7").status == "FAILED"
    # WHEN the operator retries it
    assert operations.retry_failed(engine, "op7").retried == [0]
    (again,) = take(engine, clients)
    # THEN its task, under a new generation, replays to the very params the first attempt trained
    assert again.generation == 1 and ask(again)[1] == params
    report(engine, ask(again)[0], params, loss_of(params))
    run_to_end(engine, clients)
    assert engine.store.get_job("op7").status == "SUCCEEDED"
    # and the sampler was told trial 0 once: its retried outcome (the failure was forgotten by the retry)
    events = [e for d in engine.store.sweep_decisions("op7") for e in d.params[TRIAL_KEY]["events"]]
    assert [e[2] for e in events if e[0] == "tell" and e[1] == 0] == ["complete"]


def test_a_sampler_failure_ends_the_job_naming_it(
    engine: Engine, clients: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a sampler that cannot run on the workers (e.g. "gp" without torch)
    from shardq.worker.runtime import Worker
    from tests.helpers import TRUSTED

    def broken(name: str, seed: int) -> Any:
        raise ModuleNotFoundError("No module named 'torch'")

    monkeypatch.setattr(optuna_sampler, "make_sampler", broken)
    engine.submit(optuna_sweep("op4", trials=2, max_parallel=1, sampler="gp"))
    worker = Worker(
        allow=TRUSTED,
        sqs=clients["sqs"],
        s3=clients["s3"],
        task_queue_url=engine.settings.task_queue_url,
        results_queue_url=engine.settings.results_queue_url,
        wait_s=1,
    )
    # WHEN the real worker runtime takes the trial: a permanent failure, reported at once
    assert worker.poll_once()
    posted = receive_all(clients["sqs"], engine.settings.results_queue_url)
    (result,) = [ShardResult.from_json(m["Body"]) for m in posted]
    assert result.status == "failed" and "optuna sampler failed" in (result.error or "")
    engine.ingest([Outcome(result)])
    # THEN the job ends FAILED, and its error names the sampler and the cause
    job = engine.store.get_job("op4")
    assert job.status == "FAILED"
    assert "optuna sampler failed" in (job.error or "") and "torch" in (job.error or "")


@pytest.mark.parametrize(
    ("search", "fix"),
    [
        ({"method": "optuna", "sampler": "anneal", "num_trials": 5}, "search.sampler must be one of"),
        ({"method": "optuna", "sampler": "tpe"}, "search.num_trials is required"),
        ({"method": "optuna", "num_trials": 5000}, "at most 1000"),
        ({"method": "grid", "sampler": "tpe"}, 'search.sampler applies to method "optuna" only'),
    ],
)
def test_bad_optuna_requests_are_refused_naming_the_field_and_nothing_is_created(
    engine: Engine, clients: dict[str, Any], search: dict[str, Any], fix: str
) -> None:
    request = optuna_sweep("bad1")
    request["search"] = search
    with pytest.raises(ValidationError, match=fix):
        engine.submit(request)
    assert take(engine, clients) == []
    with pytest.raises(Exception):
        engine.store.get_job("bad1")


@pytest.mark.parametrize(
    ("change", "fix"),
    [
        (
            {"search_space": {"act": ["relu", "tanh"]}, "sampler": "cmaes"},
            '"cmaes" needs at least one numeric parameter',
        ),
        (
            {"search_space": {"layers": [[64, 64], [128]]}},
            "Optuna's categorical choices are strings, numbers",
        ),
        ({"search_space": [{"lr": 0.1}, {"lr": 0.01}]}, 'search.method "optuna" needs a search_space object'),
        ({"hyperparameters": {TRIAL_KEY: 1}}, f"hyperparameters.{TRIAL_KEY} is reserved"),
        ({"early_stopping": {"method": "successive_halving"}}, 'early_stopping.method must be "asha"'),
    ],
)
def test_spaces_and_combinations_optuna_cannot_ask_are_refused(
    engine: Engine, clients: dict[str, Any], change: dict[str, Any], fix: str
) -> None:
    request = optuna_sweep("bad2", sampler=change.pop("sampler", "tpe"))
    request.update(change)
    with pytest.raises(ValidationError, match=fix):
        engine.submit(request)
    assert take(engine, clients) == []


def test_a_worker_without_optuna_hands_the_trial_on_instead_of_failing_it(
    engine: Engine, clients: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a worker whose environment has no Optuna (another worker of the fleet may have it)
    from shardq.worker.runtime import Worker
    from tests.helpers import TRUSTED

    def missing() -> Any:
        raise optuna_sampler.SamplerError("optuna is not installed here", permanent=False)

    monkeypatch.setattr(optuna_sampler, "_optuna", missing)
    engine.submit(optuna_sweep("op6", trials=2, max_parallel=1))
    worker = Worker(
        allow=TRUSTED,
        sqs=clients["sqs"],
        s3=clients["s3"],
        task_queue_url=engine.settings.task_queue_url,
        results_queue_url=engine.settings.results_queue_url,
        wait_s=1,
    )
    # WHEN it takes the trial: no result on an early attempt, the task goes back to the queue
    assert worker.poll_once()
    assert receive_all(clients["sqs"], engine.settings.results_queue_url, max_empty=1) == []
    monkeypatch.undo()
    (task,) = take(engine, clients)
    # THEN a worker with Optuna asks it as usual
    assert task.shard_id == 0 and ask(task)[1]


def test_with_asha_the_sampler_asks_rung_0_and_promotions_keep_their_params(
    engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN an Optuna sweep with ASHA (eta 3: rungs of 1, 3 and 9 epochs)
    asha = {"method": "asha", "eta": 3, "min_budget": 1, "max_budget": 9}
    engine.submit(optuna_sweep("op5", trials=9, early_stopping=asha))
    seen: dict[int, dict[str, Any]] = {}

    def value_of(task: ShardTask, params: dict[str, Any]) -> float:
        # a promoted trial asks again from its own log: the very params its rung 0 trained
        assert seen.setdefault(task.shard_id, params) == params
        return loss_of(params) / (task.round + 1)

    run_to_end(engine, clients, value_of)
    job = engine.store.get_job("op5")
    assert job.status == "SUCCEEDED", job.error
    manifest = manifest_of(engine, clients, "op5")
    assert (
        manifest["best"]["rung"] == 2
        and manifest["best"]["hyperparameters"] == seen[manifest["best"]["trial"]]
    )
    # the sampler heard of rung results: reports, and prunes of trials outside their rung's top third
    events = [
        e
        for d in engine.store.sweep_decisions("op5")
        for e in (d.params.get(TRIAL_KEY) or {}).get("events", [])
    ]
    assert any(e[0] == "report" for e in events) and any(e[:3] == ["tell", e[1], "pruned"] for e in events)


def test_the_example_request_trains_real_models_through_the_worker_runtime(
    engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN the README's example (examples.linear, TPE), made small, and two real worker runtimes
    from tests.finished import run_job

    request = json.loads((ROOT / "examples/requests/sweep_optuna.json").read_text())
    request["search"]["num_trials"] = 6
    request["job_id"] = "op-example"
    job = run_job(engine, request)
    # THEN it succeeds; every trial reports the params Optuna asked, inside the request's space
    assert job.status == "SUCCEEDED", job.error
    manifest = manifest_of(engine, clients, "op-example")
    assert len(manifest["leaderboard"]) == 6
    asked = {r.result.shard_id: r.result.params for r in engine.store.all_results("op-example")}
    for row in manifest["leaderboard"]:
        hp = row["hyperparameters"]
        assert hp == asked[row["trial"]]
        assert 5e-4 <= hp["lr"] <= 0.2 and 0.0 <= hp["l2"] <= 0.1
    assert manifest["best"]["objective"] == min(row["objective"] for row in manifest["leaderboard"])
