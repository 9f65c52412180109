"""An asynchronous sweep's pass reads what changed since the last one (``shardq.core.sweep_cache``),
on the local cloud: GIVEN ASHA sweeps run through warm aggregators, two of them racing, an index
that lags and a decision log with a gap, THEN every pass decides what a full read decides (the
paper's rule, exactly once) while a warm aggregator reads the job's decisions and results in full
only once."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from shardq.core.contracts import ShardTask
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.progress_reads import OutcomeFeed
from tests.core.test_asha import asha_sweep, reference_asha, report, scripted_value, take
from tests.helpers import result_for

# On the test's clock: no prefetch, whatever the load (see ``tests.core.test_asha``).
pytestmark = pytest.mark.controlled_clock


def run_in_order(
    engines: list[Engine], clients: dict[str, Any], job_id: str, order: list[int]
) -> list[tuple[int, int]]:
    """Run the sweep, finishing the running tasks in ``order``; result ``i`` goes to aggregator
    ``engines[i % len(engines)]``. Returns the tasks in dispatch order."""
    running: list[ShardTask] = []
    sent: list[tuple[int, int]] = []
    step = 0
    while True:
        new = sorted(take(engines[0], clients), key=lambda t: (t.shard_id, t.round))
        running.extend(new)
        sent.extend((t.round, t.shard_id) for t in new)
        if not running:
            return sent
        task = running.pop(order[step] % len(running))
        report(engines[step % len(engines)], task, scripted_value(task.round, task.shard_id))
        step += 1


def test_a_warm_aggregator_reads_the_sweep_in_full_once_and_decides_as_the_paper(
    engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN 24 trials, eta 3 over 3 rungs, 4 in flight, finishing in a seeded order
    rng = random.Random(5)
    order = [rng.randrange(1000) for _ in range(200)]
    expected = reference_asha(order, trials=24, eta=3, rungs=3, slots=4, value=scripted_value)
    # WHEN one warm aggregator ingests every result
    engine.submit(asha_sweep("warm", trials=24, max_parallel=4))
    sent = run_in_order([engine], clients, "warm", order)
    # THEN it dispatched the paper's jobs, and read the decisions and results in full once each
    # (its first pass); every later pass read only the passes and results that were new
    assert sent == expected
    assert engine.store.get_job("warm").status == "SUCCEEDED"
    assert engine.advancer.sweep_cache().full_reads == 2


def test_two_racing_aggregators_each_catch_up_from_the_log_and_the_index(
    make_engine: Any, clients: dict[str, Any]
) -> None:
    # GIVEN two warm aggregators (two Lambda containers) taking the results in turn
    rng = random.Random(9)
    order = [rng.randrange(1000) for _ in range(200)]
    expected = reference_asha(order, trials=18, eta=3, rungs=3, slots=4, value=scripted_value)
    first, second = make_engine(), make_engine()
    first.submit(asha_sweep("pair", trials=18, max_parallel=4))
    # WHEN each ingests every other result (each sees the other's passes only through the store)
    sent = run_in_order([first, second], clients, "pair", order)
    # THEN the sweep is the paper's, and neither read the job in full after its first pass
    assert sent == expected
    assert first.store.get_job("pair").status == "SUCCEEDED"
    assert first.advancer.sweep_cache().full_reads == 2
    assert second.advancer.sweep_cache().full_reads == 2


def test_a_lagging_index_or_a_gap_in_the_log_falls_back_to_a_full_read(
    engine: Engine, make_engine: Any, clients: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a warm aggregator past its first pass, its three lanes run by three workers (with one
    # worker seen, its two queued tasks fill the fleet and the free lane waits: async_prefetch)
    engine.submit(asha_sweep("lag", trials=9, max_parallel=3))
    first = take(engine, clients)

    def outcome(task: ShardTask) -> Outcome:
        result = result_for(task, loss=scripted_value(0, task.shard_id))
        return Outcome(replace(result, worker_id=f"w{task.shard_id}"))

    assert engine.ingest([outcome(first[0])]) == []
    cache = engine.advancer.sweep_cache()
    assert cache.full_reads == 2
    # WHEN another aggregator records a result that the index does not return yet (it lags)
    other = make_engine()
    assert other.ingest([outcome(first[1])]) == []
    monkeypatch.setattr(OutcomeFeed, "read", lambda self: [])
    assert engine.ingest([outcome(first[2])]) == []
    # THEN the counters show a result missing from the view: the results are read in full, and
    # the pass sees all three (the rung's best is promoted: 3 results, top 1)
    assert cache.full_reads == 3
    decisions = engine.store.sweep_decisions("lag", 1)
    best = min(first, key=lambda t: scripted_value(0, t.shard_id)).shard_id
    assert [d.trial for d in decisions] == [best] and decisions[0].known == 3
    monkeypatch.undo()
    # AND when the log item of a pass another aggregator decided is missing (as for a job decided
    # before the log existed), the warm one reads the decisions in full once, and nothing is
    # decided twice
    running = take(engine, clients)
    done = running.pop(0)
    assert other.ingest([Outcome(result_for(done, loss=scripted_value(done.round, done.shard_id)))]) == []
    seq, _ = engine.store.sweep_cursor("lag")
    engine.ddb.delete_item(
        TableName=engine.store.table, Key={"pk": {"S": "JOB#lag"}, "sk": {"S": f"ASYNCLOG#{seq:09d}"}}
    )
    report(engine, running[0], scripted_value(running[0].round, running[0].shard_id))
    assert cache.full_reads == 4
    keys = [d.key for d in engine.store.sweep_decisions("lag")]
    assert len(keys) == len(set(keys))
    seq_after, _ = engine.store.sweep_cursor("lag")
    assert seq_after == seq + 1
