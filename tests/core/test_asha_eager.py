"""ASHA's eager promotion (``early_stopping.promotion "eager"``, ``shardq.core.asha_rules``), on the
local cloud: a rung with fewer than eta results promotes its best finite result so far, as Optuna's
``SuccessiveHalvingPruner`` and Ray Tune's ``ASHAScheduler`` do; from eta results on, the paper's
rule. Every promise of the paper's mode holds: each promotion once, duplicates and late results
never promote twice, diverged trials never promote, cancel and retry.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from shardq.core import async_sweep, operations
from shardq.core.contracts import TrainingRequest, ValidationError
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.tally import request_plan_text
from tests.core.test_asha import (
    ASHA,
    asha_sweep,
    finish_in_order,
    load_manifest,
    loss_of,
    reference_asha,
    report,
    run_to_end,
    scripted_value,
    take,
)
from tests.helpers import result_for

# On the test's clock: no prefetch, whatever the load (see ``tests.core.test_asha``).
pytestmark = pytest.mark.controlled_clock

EAGER = {**ASHA, "promotion": "eager"}


def eager_sweep(job_id: str, **extra: Any) -> dict[str, Any]:
    """``tests.core.test_asha.asha_sweep`` with the eager rule."""
    return asha_sweep(job_id, early_stopping=dict(EAGER), **extra)


def refused(payload: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as err:
        TrainingRequest.from_dict(payload)
    return str(err.value)


def test_the_rule_is_validated_kept_in_the_request_and_bounds_every_rung() -> None:
    # GIVEN the eager rule on a 9-trial ASHA sweep
    request = TrainingRequest.from_dict(eager_sweep("v"))
    es = request.early_stopping
    assert es is not None and es.promotion == "eager"
    # THEN it survives the stored round trip, and every trial may reach every rung (the bound a
    # status promises: each of the first eta - 1 results may be a new best)
    assert TrainingRequest.from_dict(request.to_dict()).early_stopping == es
    assert async_sweep.rung_bounds(request) == [9, 9, 9] and async_sweep.max_tasks(request) == 27
    assert "eager promotion" in request_plan_text(request)
    # the default is the paper's rule, and a request that does not name it keeps its stored shape
    paper = TrainingRequest.from_dict(asha_sweep("p"))
    assert paper.early_stopping is not None and paper.early_stopping.promotion == "paper"
    assert "promotion" not in paper.to_dict()["early_stopping"]
    assert "eager" not in request_plan_text(paper)
    # WHEN the rule is misspelt, not a string, or given to synchronous halving, THEN the error
    # names the field and the fix
    msg = refused(asha_sweep("x", early_stopping={**ASHA, "promotion": "eagre"}))
    assert "early_stopping.promotion must be one of paper, eager" in msg and "'eagre'" in msg
    assert "early_stopping.promotion must be one of" in refused(
        asha_sweep("x", early_stopping={**ASHA, "promotion": 1})
    )
    halving = {**EAGER, "method": "successive_halving"}
    msg = refused(asha_sweep("x", early_stopping=halving))
    assert 'early_stopping.promotion applies to method "asha" only' in msg and "remove it" in msg


def test_the_first_result_of_each_rung_goes_on_at_once(engine: Engine, clients: dict[str, Any]) -> None:
    # GIVEN an eager 9-trial ASHA sweep (eta 3), 3 in flight
    engine.submit(eager_sweep("e1"))
    a, b, c = take(engine, clients)
    # WHEN trial 0 reports first (loss 1)
    report(engine, a, 1.0)
    # THEN its freed slot takes its promotion at once: the best of 1 result (the paper's rule
    # would draw trial 3 and wait for two more results)
    (up,) = take(engine, clients)
    assert (up.round, up.shard_id) == (1, 0) and up.init_model_uri
    (d,) = engine.store.sweep_decisions("e1", 1)
    assert (d.trial, d.known, d.rank, d.rule) == (0, 1, 0, "eager")
    # WHEN trial 1 reports a worse loss: not the best of 2, so its slot draws a new trial
    report(engine, b, 2.0)
    assert [(t.round, t.shard_id) for t in take(engine, clients)] == [(0, 3)]
    # WHEN the promoted trial finishes rung 1 first, THEN it goes on to the full budget at once
    report(engine, up, 0.5)
    (full,) = take(engine, clients)
    assert (full.round, full.shard_id) == (2, 0) and full.hyperparameters["epochs"] == 6
    # WHEN trial 2 reports the best rung-0 loss as the third result, THEN the paper's rule (top
    # 3 // 3 = 1) promotes it, recorded as "asha"
    report(engine, c, 0.1)
    assert [(t.round, t.shard_id) for t in take(engine, clients)] == [(1, 2)]
    (_, d2) = engine.store.sweep_decisions("e1", 1)
    assert (d2.trial, d2.known, d2.rank, d2.rule) == (2, 3, 0, "asha")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_eager_equals_optunas_rule_on_a_scripted_arrival_order(
    engine: Engine, clients: dict[str, Any], seed: int
) -> None:
    # GIVEN 12 trials, eta 3 over 3 rungs, 4 in flight, and a seeded order in which tasks finish
    rng = random.Random(seed)
    order = [rng.randrange(1000) for _ in range(100)]
    expected = reference_asha(order, trials=12, eta=3, rungs=3, slots=4, value=scripted_value, eager=True)
    job_id = f"eref{seed}"
    engine.submit(eager_sweep(job_id, trials=12, max_parallel=4))
    sent = finish_in_order(engine, clients, order)
    # THEN it dispatched exactly the reference's jobs, in order, and more than the paper's rule
    assert sent == expected
    paper = reference_asha(order, trials=12, eta=3, rungs=3, slots=4, value=scripted_value)
    assert len(sent) >= len(paper)
    assert engine.store.get_job(job_id).status == "SUCCEEDED"


def test_duplicate_late_and_concurrent_results_never_promote_twice(
    engine: Engine, make_engine: Any, clients: dict[str, Any]
) -> None:
    # GIVEN an eager sweep with 3 trials of rung 0 in flight
    engine.submit(eager_sweep("edup"))
    first = take(engine, clients)
    best = result_for(first[0], loss=0.5)
    # WHEN the best result arrives twice in one batch, again later, and through a second aggregator
    assert engine.ingest([Outcome(best), Outcome(best)]) == []
    assert engine.ingest([Outcome(best)]) == []
    assert make_engine().ingest([Outcome(best)]) == []
    # THEN it was promoted once (the eager rule's one promotion of a rung with 1 result)
    assert [(t.round, t.shard_id) for t in take(engine, clients)] == [(1, 0)]
    # and the other two results, each arriving twice, draw one new trial each and promote nothing
    rest = [result_for(t, loss=1.0 + t.shard_id) for t in first[1:]]
    assert engine.ingest([Outcome(r) for r in rest + rest]) == []
    assert sorted((t.round, t.shard_id) for t in take(engine, clients)) == [(0, 3), (0, 4)]
    decisions = engine.store.sweep_decisions("edup")
    assert len(decisions) == len({d.key for d in decisions}) == 6
    assert [d.trial for d in decisions if d.rung == 1] == [0]


def test_a_diverged_or_failed_first_result_is_never_promoted(engine: Engine, clients: dict[str, Any]) -> None:
    # GIVEN an eager sweep that may fail one task
    engine.submit(eager_sweep("enan", max_failed_shards=1))
    a, b, c = take(engine, clients)
    # WHEN the first result is NaN, the second inf, the third failed: none is a candidate
    report(engine, a, math.nan)
    report(engine, b, math.inf)
    report(engine, c, status="failed")
    drawn = take(engine, clients)
    assert sorted((t.round, t.shard_id) for t in drawn) == [(0, 3), (0, 4), (0, 5)]
    assert engine.store.sweep_decisions("enan", 1) == []
    rows = {r.result.shard_id: r.result.status for r in engine.store.results("enan", 0)}
    assert rows == {0: "diverged", 1: "diverged", 2: "failed"}
    # WHEN the first finite result arrives (the 4th of the rung), THEN the paper's rule (top 4 // 3
    # = 1 of the finite ones) promotes it
    report(engine, drawn[0], 3.0)
    assert [(t.round, t.shard_id) for t in take(engine, clients)] == [(1, 3)]
    (d,) = engine.store.sweep_decisions("enan", 1)
    assert (d.trial, d.known, d.rank, d.rule) == (3, 4, 0, "asha")


def test_the_first_finite_result_after_a_diverged_one_goes_on(
    engine: Engine, clients: dict[str, Any]
) -> None:
    engine.submit(eager_sweep("enan2"))
    a, b, _ = take(engine, clients)
    report(engine, a, math.nan)
    assert [(t.round, t.shard_id) for t in take(engine, clients)] == [(0, 3)]
    report(engine, b, 2.0)  # the best finite of 2 results: eager promotes it
    assert [(t.round, t.shard_id) for t in take(engine, clients)] == [(1, 1)]
    (d,) = engine.store.sweep_decisions("enan2", 1)
    assert (d.trial, d.known, d.rank, d.rule) == (1, 2, 0, "eager")


def test_an_eager_sweep_runs_to_its_end_and_its_manifest_names_the_rule(
    engine: Engine, clients: dict[str, Any]
) -> None:
    engine.submit(eager_sweep("e2"))
    ran = run_to_end(engine, clients)
    job = engine.store.get_job("e2")
    assert job.status == "SUCCEEDED", job.error
    keys = [(t.round, t.shard_id) for t in ran]
    assert len(keys) == len(set(keys)) and sum(1 for r, _ in keys if r == 0) == 9
    # each promotion once, from a finite result of the rung below; within the status's bound
    decisions = engine.store.sweep_decisions("e2")
    assert len(decisions) == len(ran) <= async_sweep.max_tasks(job.request)
    assert {d.rule for d in decisions if d.rung} <= {"eager", "asha", "drain"}
    assert any(d.rule == "eager" for d in decisions)
    manifest = load_manifest(clients, job.result_uri)
    es = manifest["early_stopping"]
    assert (es["method"], es["promotion"]) == ("asha", "eager")
    assert manifest["best"]["rung"] == 2 and manifest["best"]["trial"] % 5 == 0
    # the budget spent is the trial-epochs the tasks ran
    assert es["budget_spent"] == sum(t.hyperparameters["epochs"] for t in ran)


def test_cancel_sends_no_new_task_and_retry_goes_on_under_the_eager_rule(
    engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN an eager sweep cancelled while its first results come in: no promotion goes out
    engine.submit(eager_sweep("ecx"))
    first = take(engine, clients)
    operations.cancel(engine, "ecx")
    report(engine, first[0], 1.0)
    assert take(engine, clients) == []
    assert engine.store.get_job("ecx").status == "CANCELLED"
    assert engine.store.sweep_decisions("ecx", 1) == []
    # GIVEN another with no failure budget whose first result is a failure (the job FAILS) and
    # whose second arrives late
    engine.submit(eager_sweep("ert", max_failed_shards=0))
    a, b, _c = take(engine, clients)
    report(engine, a, status="failed")
    report(engine, b, 1.0)
    assert engine.store.get_job("ert").status == "FAILED"
    # WHEN the operator retries, THEN the sweep goes on and promotes eagerly again, once per trial
    out = operations.retry_failed(engine, "ert")
    assert out.status == "RUNNING" and out.retried == [0, 1, 2]
    run_to_end(engine, clients, loss=loss_of)
    job = engine.store.get_job("ert")
    assert job.status == "SUCCEEDED", job.error
    decisions = engine.store.sweep_decisions("ert")
    assert len(decisions) == len({d.key for d in decisions})
    assert any(d.rule == "eager" for d in decisions)
