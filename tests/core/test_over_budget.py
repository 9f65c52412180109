"""The failure-budget message names the first failure as the views do (``shardq.core.over_budget``).

Rounds and rungs count from 1 in every human view (``status``, ``watch``, ``result``); an
asynchronous sweep's failures may be at any rung, so all of them are searched. On the local cloud.
"""

from __future__ import annotations

from typing import Any

from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from tests.core.test_end_freeze import take
from tests.helpers import result_for
from tests.requests import make_request


def test_a_synchronous_job_names_its_failed_round_from_1(engine: Engine, clients: dict[str, Any]) -> None:
    engine.submit(make_request(job_id="dp", shards=2, rounds=2, max_failed_shards=0))
    engine.ingest([Outcome(result_for(t)) for t in take(engine, clients)])
    (reduce,) = take(engine, clients)
    engine.ingest([Outcome(result_for(reduce))])
    second = sorted(take(engine, clients), key=lambda t: t.shard_id)
    assert {t.round for t in second} == {1}
    engine.ingest([Outcome(result_for(second[1], status="failed"))])
    job = engine.store.get_job("dp")
    assert job.status == "FAILED"
    assert (
        job.error == "1 shards failed, over max_failed_shards=0; first: round 2 shard 1: CUDA out of memory"
    )


def test_an_asynchronous_sweep_names_a_failure_at_a_later_rung(
    engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN an ASHA sweep (eta 3) whose first three trials report and the best is promoted to rung 2
    engine.submit(
        make_request(
            "sweep",
            job_id="ah",
            search_space={"lr": {"log_uniform": [1e-4, 1e-1]}},
            search={"method": "random", "num_trials": 9, "seed": 7},
            early_stopping={"method": "asha", "eta": 3, "min_budget": 1, "max_budget": 9},
            max_parallel=3,
            max_failed_shards=0,
        )
    )
    first = take(engine, clients)
    engine.ingest([Outcome(result_for(t, loss=float(t.shard_id + 1))) for t in first])
    promoted = [t for t in take(engine, clients) if t.round == 1]
    assert [t.shard_id for t in promoted] == [0]
    # WHEN the promoted trial fails at its second rung
    engine.ingest([Outcome(result_for(promoted[0], status="failed"))])
    job = engine.store.get_job("ah")
    # THEN the message names that rung (from 1) and the trial, not "round 0"
    assert job.status == "FAILED"
    assert job.error == "1 shards failed, over max_failed_shards=0; first: rung 2 trial 0: CUDA out of memory"
