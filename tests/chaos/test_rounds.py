"""Chaos scenarios for rounds that do not wait for everyone, and for successive-halving rungs.

Real ``shardq worker`` processes, the real aggregator and DLQ handler, seeded faults; each
history is checked whole (tests/chaos/history.py, invariant 9 for sampled rounds, quorum
closes and late results): 0 lost, 0 double-counted, every job ends.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable

import pytest

from lambdas import splitter
from shardq.core import enqueue as enqueue_module
from shardq.core import planning
from shardq.core.fanout import FanOutError
from tests.chaos.conftest import BASE_SEED, Rig
from tests.chaos.harness import request, run_until, running, settle, trainings
from tests.chaos.history import assert_history, collect
from tests.helpers import FlakySQS, LambdaContext, count_messages

pytestmark = pytest.mark.local_cloud


def sweep(job_id: str, **extra: object) -> dict[str, object]:
    """A 9-trial grid over the synthetic linear problem, halved over budgets 1, 3, 9 epochs."""
    return {
        "job_id": job_id,
        "kind": "sweep",
        "dataset": {"uri": "synthetic://linear?dim=4&noise=0.05&seed=11", "num_samples": 512},
        "hyperparameters": {"batch_size": 32, "sleep": 0.3},
        "search_space": {"lr": [0.003, 0.03, 0.1], "l2": [0.0, 0.01, 0.1]},
        "objective": {"metric": "val_loss", "direction": "minimize"},
        "early_stopping": {"eta": 3, "min_budget": 1, "max_budget": 9},
        "max_parallel": 9,
        "entrypoint": "tests.chaos.workloads:train",
        **extra,
    }


# 15 ---------------------------------------------------------------------------------------


def test_a_straggler_past_the_quorum_is_late_and_a_killed_worker_loses_nothing(
    rig: Callable[..., Rig],
) -> None:
    # GIVEN 3 workers on a 2-round job of 6 shards that samples 4 per round and closes a round at
    # 3 of 4 successes; in every round shard 5 (when sampled) is 10 times slower than the others
    r = rig(task_visibility_s=2, workers=3)
    payload = request(
        "quorum",
        shards=6,
        rounds=2,
        sleep=0.4,
        participation={"fraction": 0.67, "seed": 3},
        quorum={"fraction": 0.75},
    )
    payload["hyperparameters"] = {**payload["hyperparameters"], "slow_shards": [5]}  # type: ignore[dict-item]
    r.engine.submit(payload)
    request_model = r.engine.store.get_job("quorum").request
    assert 5 in planning.participants(request_model, 0)  # the seed puts the straggler in round 0
    r.pool.start()
    rng = random.Random(BASE_SEED + 150)
    killed: list[int] = []

    def chaos() -> None:
        # WHEN a worker is SIGKILLed once while it trains a round-1 shard
        if killed:
            return
        busy = [t for t in running(r.dir, "quorum") if t["round"] == 1 and r.pool.by_pid(t["pid"])]
        if busy:
            victim = rng.choice(sorted(busy, key=lambda t: t["pid"]))
            proc = r.pool.by_pid(victim["pid"])
            assert proc is not None
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed.append(victim["shard"])

    run_until(r.engine, "quorum", r.pump, pool=r.pool, chaos=chaos, timeout=120)
    # let the straggler finish and report, so its late result is on record
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not r.engine.store.late_results("quorum"):
        r.pool.tick()
        if not r.pump.step():
            time.sleep(0.2)
    settle(r.pump, pool=r.pool)
    # THEN the history holds: sampled rounds, quorum closes, every late result apart and uncounted
    h = collect(r.engine, "quorum", r.dir)
    assert_history(h, status="SUCCEEDED", exits=(0, -signal.SIGKILL))
    assert killed, "no round-1 shard was running to kill"
    assert h.job.closed_round == 1
    assert [o.result.shard_id for o in h.late if o.result.round == 0] == [5]
    assert h.plans == {r_: list(planning.participants(request_model, r_)) for r_ in (0, 1)}


# 16 ---------------------------------------------------------------------------------------


def test_a_worker_killed_in_a_rung_costs_a_retry_not_a_trial(rig: Callable[..., Rig]) -> None:
    # GIVEN a successive-halving sweep (9 → 3 → 1 trials) on 3 workers
    r = rig(task_visibility_s=2, workers=3)
    payload = sweep("rungs")
    r.engine.submit(payload)
    r.pool.start()
    killed: list[tuple[int, int]] = []

    def chaos() -> None:
        # WHEN a worker is SIGKILLed while it trains a trial of rung 1
        if killed:
            return
        busy = [t for t in running(r.dir, "rungs") if t["round"] == 1 and r.pool.by_pid(t["pid"])]
        if busy:
            proc = r.pool.by_pid(busy[0]["pid"])
            assert proc is not None
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed.append((busy[0]["round"], busy[0]["shard"]))

    run_until(r.engine, "rungs", r.pump, pool=r.pool, chaos=chaos, timeout=150)
    settle(r.pump, pool=r.pool)
    # THEN the killed trial was trained again in its rung, and the sweep ended whole
    h = collect(r.engine, "rungs", r.dir)
    assert_history(h, status="SUCCEEDED", exits=(0, -signal.SIGKILL))
    assert killed
    assert [len(h.plans[k]) for k in (0, 1, 2)] == [9, 3, 1]
    starts = [
        t
        for t in trainings(r.dir, "rungs")
        if t["event"] == "start" and (t["round"], t["shard"]) == killed[0]
    ]
    assert len(starts) >= 2
    assert h.manifest is not None and h.manifest["early_stopping"]["budget_spent"] == 9 + 3 * 2 + 6


# 17 ---------------------------------------------------------------------------------------


def test_a_splitter_killed_mid_fan_out_resumes_the_same_sampled_participants(
    rig: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a 12-shard job sampling half its shards, checkpointed every 2 tasks
    monkeypatch.setattr(enqueue_module, "CHUNK", 2)
    r = rig(task_visibility_s=2)
    payload = request("resample", shards=12, rounds=1, participation={"fraction": 0.5, "seed": 8})
    real = r.clients["sqs"]
    # WHEN the splitter dies after its first chunk, and the same request is sent again
    r.engine.fanout.sqs = FlakySQS(real, die_after=1)
    with pytest.raises(FanOutError):
        splitter.split(payload, LambdaContext())
    r.engine.fanout.sqs = real
    assert splitter.split(payload, LambdaContext())["created"] is False
    # THEN exactly the round's 6 participants are on the queue, once each, and the job ends whole
    assert count_messages(real, r.settings.task_queue_url) == 6
    r.pool.start()
    run_until(r.engine, "resample", r.pump, pool=r.pool, timeout=90)
    settle(r.pump, pool=r.pool)
    h = collect(r.engine, "resample", r.dir)
    assert_history(h, status="SUCCEEDED")
    want = list(planning.participants(h.job.request, 0))
    assert sorted({t["shard"] for t in trainings(r.dir, "resample") if t["event"] == "end"}) == want
