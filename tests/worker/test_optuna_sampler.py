"""Optuna sweeps: shardq asks the trials Optuna asks in-process, given the same history and seed.

GIVEN a scripted objective and a seed, WHEN Optuna runs its own ask/tell loop in this process and
shardq draws the same number of trials through its trial source (``shardq.core.optuna_search``,
which knows no Optuna) and asks each on a "worker" (``shardq.worker.optuna_sampler``, replaying the
job's log), THEN the asked params are equal, trial by trial, for every sampler: sequentially and
with several trials in flight, finishing in a scripted order, with failures and a NaN objective.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

optuna = pytest.importorskip(
    "optuna", reason="optuna is optional: make optuna installs it", exc_type=ImportError
)
pytestmark = pytest.mark.filterwarnings("ignore:The value nan is not acceptable")

from shardq.core.async_sweep import SweepRecords  # noqa: E402
from shardq.core.contracts import ShardResult, TrainingRequest  # noqa: E402
from shardq.core.optuna_search import TRIAL_KEY, OptunaSource  # noqa: E402
from shardq.worker import optuna_sampler  # noqa: E402
from shardq.worker.optuna_sampler import Replayer, SamplerError, distributions  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE: dict[str, Any] = {
    "lr": {"log_uniform": [1e-4, 1.0]},
    "momentum": {"uniform": [0.0, 0.99]},
    "width": {"int_uniform": [8, 128]},
    "act": ["relu", "tanh", "gelu"],
}
NUMERIC_SPACE = {k: v for k, v in SPACE.items() if k != "act"}  # CMA-ES's own ground


def objective(params: dict[str, Any], trial: int) -> float:
    """A scripted objective: smooth in the numbers, a step per activation; trial 5 diverges (NaN) and
    trial 7 fails (None: the worker's error), so both paths meet both."""
    if trial == 5:
        return math.nan
    value = (
        (math.log10(params["lr"]) + 2.0) ** 2
        + (params["momentum"] - 0.9) ** 2
        + abs(params["width"] - 64) / 64
    )
    return value + {"relu": 0.0, "tanh": 0.3, "gelu": 0.1}.get(params.get("act", "relu"), 0.0)


FAILS = {7}


def request_for(sampler: str, trials: int, space: dict[str, Any], parallel: int = 1) -> TrainingRequest:
    return TrainingRequest.from_dict(
        {
            "kind": "sweep",
            "dataset": {"uri": "s3://bucket/data", "num_samples": 100},
            "search_space": space,
            "objective": {"metric": "val_loss", "direction": "minimize"},
            "search": {"method": "optuna", "sampler": sampler, "num_trials": trials, "seed": 42},
            "max_parallel": parallel,
        }
    )


def in_process(
    sampler: str, trials: int, space: dict[str, Any], order: list[int], parallel: int
) -> list[dict]:
    """Optuna's own loop: ``parallel`` trials asked, then each tell (in ``order``) followed by an ask."""
    samplers = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "gp": optuna.samplers.GPSampler,
    }
    study = optuna.create_study(sampler=samplers[sampler](seed=42), direction="minimize")
    dists = distributions(space)
    asked: dict[int, Any] = {}
    for _ in range(min(parallel, trials)):
        t = study.ask(dists)
        asked[t.number] = t
    for number in order:
        t = asked[number]
        value = objective(t.params, number)
        if number in FAILS:
            study.tell(t, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(t, value)  # a NaN value: Optuna marks the trial FAIL itself
        if len(asked) < trials:
            nxt = study.ask(dists)
            asked[nxt.number] = nxt
    return [asked[n].params for n in sorted(asked)]


def through_shardq(
    request: TrainingRequest, order: list[int], parallel: int, replayer: Replayer | None
) -> tuple[list[dict], list[int]]:
    """shardq's path: the source draws (no Optuna), each task's log is replayed on a worker.

    ``replayer`` None: every ask on a cold worker (a fresh process). Returns the params and how many
    events each ask replayed.
    """
    source = OptunaSource(request)
    drawn: dict[int, dict[str, Any]] = {}
    results: list[ShardResult] = []
    asked: dict[int, dict[str, Any]] = {}
    replayed: list[int] = []

    def draw() -> None:
        n = len(drawn)
        draft = source.next_trial(SweepRecords(request, dict(drawn), list(results)))
        assert draft is not None and draft[TRIAL_KEY]["trial"] == n
        drawn[n] = draft
        task_params = source.task_params(n, drawn)
        worker = replayer or Replayer()
        asked[n] = worker.ask(task_params[TRIAL_KEY], "job-1")
        replayed.append(worker.last_replayed)

    for _ in range(min(parallel, request.task_count)):
        draw()
    for number in order:
        value = objective(asked[number], number)
        if number in FAILS:
            result = ShardResult("job-1", 0, number, "train", "failed", error="boom")
        elif math.isnan(value):
            result = ShardResult("job-1", 0, number, "train", "diverged", metrics={"val_loss": value})
        else:
            result = ShardResult("job-1", 0, number, "train", "succeeded", metrics={"val_loss": value})
        results.append(result)
        if len(drawn) < request.task_count:
            draw()
    return [asked[n] for n in sorted(asked)], replayed


def completion_order(trials: int, parallel: int) -> list[int]:
    """A scripted order in which trials finish: with ``parallel`` in flight, a trial finishes
    ahead of one asked before it now and then (a straggler)."""
    if parallel == 1:
        return list(range(trials))
    in_flight, order, nxt = list(range(parallel)), [], parallel
    step = 0
    while in_flight:
        pick = in_flight[(step * 7) % len(in_flight)]
        step += 1
        in_flight.remove(pick)
        order.append(pick)
        if nxt < trials:
            in_flight.append(nxt)
            nxt += 1
    return order


@pytest.mark.parametrize(
    ("sampler", "trials", "space"),
    [("tpe", 24, SPACE), ("random", 12, SPACE), ("cmaes", 18, NUMERIC_SPACE), ("gp", 12, SPACE)],
)
@pytest.mark.parametrize("parallel", [1, 3])
def test_shardq_asks_what_optuna_asks_in_process(
    sampler: str, trials: int, space: dict[str, Any], parallel: int
) -> None:
    if sampler == "gp":
        pytest.importorskip("torch", reason="GPSampler needs PyTorch: make torch installs it")
    # GIVEN the same seed, the same scripted objective and the same order of completions
    order = completion_order(trials, parallel)
    expected = in_process(sampler, trials, space, order, parallel)
    request = request_for(sampler, trials, space, parallel)
    # WHEN shardq draws and a warm worker asks every trial
    got, replayed = through_shardq(request, order, parallel, Replayer())
    # THEN trial by trial, the params are Optuna's own, to the last bit
    assert got == expected
    # and the warm worker replayed only what was new each time (a few events, not the history)
    assert max(replayed[parallel:], default=0) <= parallel + 2


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_cold_worker_replays_the_whole_log_and_asks_the_same(sampler: str) -> None:
    # GIVEN a fresh process for every ask (no cache: the job's log alone)
    order = completion_order(14, 2)
    expected = in_process(sampler, 14, SPACE, order, 2)
    got, replayed = through_shardq(request_for(sampler, 14, SPACE, 2), order, 2, None)
    # THEN the same trials, each ask having replayed the whole history before it
    assert got == expected
    assert replayed[-1] > 20


def test_every_outcome_is_told_once_whatever_arrives_twice() -> None:
    # GIVEN records in which a result appears twice (a redelivery) and a failure is later retried
    request = request_for("tpe", 6, SPACE, 2)
    source = OptunaSource(request)
    ok = ShardResult("j", 0, 0, "train", "succeeded", metrics={"val_loss": 0.5})
    failed = ShardResult("j", 0, 1, "train", "failed", error="oom")
    drawn = {
        0: source.next_trial(SweepRecords(request, {}, [])),
        1: source.next_trial(SweepRecords(request, {0: {}}, [])),
    }
    drawn = {k: v for k, v in drawn.items() if v is not None}
    drawn[1] = {TRIAL_KEY: {"trial": 1, "events": []}}
    third = source.next_trial(SweepRecords(request, drawn, [ok, ok, failed]))
    assert third is not None
    drawn[2] = third
    retried = ShardResult("j", 0, 1, "train", "succeeded", metrics={"val_loss": 0.1})
    fourth = source.next_trial(SweepRecords(request, drawn, [ok, retried, ok]))
    assert fourth is not None
    drawn[3] = fourth
    # THEN the first draw after them tells each once; the later draw tells nothing again
    assert third[TRIAL_KEY]["events"] == [["tell", 0, "complete", 0.5], ["tell", 1, "fail"]]
    assert fourth[TRIAL_KEY]["events"] == []
    log = source.task_params(3, drawn)[TRIAL_KEY]
    tells = [e for e in log["events"] if e[0] == "tell"]
    assert sorted(e[1] for e in tells) == [0, 1]
    # and the log replays (Optuna accepts it: each trial told once, after its ask)
    assert set(Replayer().ask(log, "j")) == set(SPACE)


def test_a_nan_objective_is_told_as_a_failure_like_optunas_own_loop() -> None:
    # GIVEN a trial that diverged (non-finite objective)
    request = request_for("tpe", 3, SPACE)
    source = OptunaSource(request)
    drawn = {0: source.next_trial(SweepRecords(request, {}, []))}
    nan = ShardResult("j", 0, 0, "train", "diverged", metrics={"val_loss": math.nan})
    drawn[1] = source.next_trial(SweepRecords(request, drawn, [nan]))
    # THEN it is told FAIL: Optuna's optimize marks a NaN objective FAIL, and TPE learns nothing from it
    assert drawn[1][TRIAL_KEY]["events"] == [["tell", 0, "fail"]]
    log = source.task_params(1, drawn)[TRIAL_KEY]
    replayer = Replayer()
    replayer.ask(log, "j")
    study = replayer._studies["j"].study
    assert study.trials[0].state == optuna.trial.TrialState.FAIL


def test_asha_reports_rungs_and_prunes_outside_the_top_of_its_rung() -> None:
    # GIVEN an Optuna sweep with ASHA (eta 3, budgets 1, 3, 9) and rung results in the records
    request = TrainingRequest.from_dict(
        {
            **request_for("tpe", 9, SPACE, 3).to_dict(),
            "early_stopping": {"method": "asha", "eta": 3, "min_budget": 1, "max_budget": 9},
        }
    )
    source = OptunaSource(request)
    drawn = {m: {TRIAL_KEY: {"trial": m, "events": []}} for m in range(3)}
    rung0 = [
        ShardResult("j", 0, m, "train", "succeeded", metrics={"val_loss": v})
        for m, v in [(0, 0.3), (1, 0.9), (2, 0.5)]
    ]
    top = [ShardResult("j", 2, 0, "train", "succeeded", metrics={"val_loss": 0.1})]
    rung1 = [ShardResult("j", 1, 0, "train", "succeeded", metrics={"val_loss": 0.2})]
    draft = source.next_trial(SweepRecords(request, drawn, [*rung0, *rung1, *top]))
    assert draft is not None
    # THEN trial 0 reports rungs 0 and 1 and completes at the top rung; 1 and 2 ranked outside the
    # top 3 // 3 = 1 of rung 0: pruned with their rung-0 value reported
    assert draft[TRIAL_KEY]["events"] == [
        ["report", 0, 1, 0.3],
        ["report", 0, 3, 0.2],
        ["tell", 0, "complete", 0.1],
        ["report", 1, 1, 0.9],
        ["tell", 1, "pruned"],
        ["report", 2, 1, 0.5],
        ["tell", 2, "pruned"],
    ]
    drawn[3] = draft
    log = source.task_params(3, drawn)[TRIAL_KEY]
    replayer = Replayer()
    replayer.ask(log, "j")
    states = [t.state for t in replayer._studies["j"].study.trials]
    assert states[:3] == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.PRUNED,
    ]


def test_resolve_task_asks_and_merges_the_params() -> None:
    # GIVEN an Optuna trial's hyperparameters (the request's own beside the log)
    request = request_for("random", 2, SPACE)
    source = OptunaSource(request)
    drawn = {0: source.next_trial(SweepRecords(request, {}, []))}
    hyper = {"epochs": 3, **source.task_params(0, drawn)}
    # WHEN the worker resolves them
    resolved, asked = optuna_sampler.resolve("job-r", hyper)
    # THEN the log is gone, the asked params are in, the rest stays
    assert asked is not None and set(asked) == set(SPACE)
    assert resolved == {"epochs": 3, **asked}
    assert optuna_sampler.resolve("job-r", {"epochs": 3}) == ({"epochs": 3}, None)


def test_a_replay_that_disagrees_with_what_a_trial_trained_fails_naming_the_versions() -> None:
    request = request_for("tpe", 2, SPACE)
    source = OptunaSource(request)
    drawn = {0: source.next_trial(SweepRecords(request, {}, []))}
    log = {
        **source.task_params(0, drawn)[TRIAL_KEY],
        "params": {"0": {"lr": 0.5, "momentum": 0.1, "width": 9, "act": "relu"}},
    }
    with pytest.raises(SamplerError, match="different Optuna versions"):
        Replayer().ask(log, "j")


@pytest.mark.parametrize(
    ("log", "message"),
    [
        (
            {"sampler": "tpe", "seed": 0, "direction": "minimize", "space": SPACE, "events": []},
            "does not end with its ask",
        ),
        (
            {
                "sampler": "tpe",
                "seed": 0,
                "direction": "minimize",
                "space": {"w": {"int_uniform": [9, 1]}},
                "events": [["ask", 0]],
            },
            "could not start",
        ),
        (
            {"sampler": "tpe", "seed": 0, "direction": "minimize", "space": SPACE, "events": [["ask", 1]]},
            "asks trial 1",
        ),
        (
            {"sampler": "anneal", "seed": 0, "direction": "minimize", "space": SPACE, "events": [["ask", 0]]},
            "unknown sampler",
        ),
    ],
)
def test_a_sampler_failure_is_a_clear_error(log: dict[str, Any], message: str) -> None:
    with pytest.raises(SamplerError, match=message) as info:
        Replayer().ask(log, "j")
    assert str(info.value).startswith(optuna_sampler.SAMPLER_FAILED)
    assert info.value.permanent
