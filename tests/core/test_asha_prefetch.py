"""ASHA's prefetch (``shardq.core.async_prefetch``): decided tasks waiting in each lane so a freed
worker does not wait a coordination round trip, never more than the cap, a due promotion first.

The pure rules on constructed records, then the real engine on the local cloud on a controlled clock
(``tests.helpers.Clock``), where the overheads are measured from the job's own ``decided_at`` and
``recorded_at`` stamps: the engine's clock's time, so the depth reached does not follow the load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from shardq.core import async_prefetch, async_sweep
from shardq.core.async_prefetch import PREFETCH_CAP
from shardq.core.contracts import ShardResult, TrainingRequest
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome, SweepDecision
from tests.core.test_asha import asha_sweep, loss_of, take
from tests.helpers import Clock, result_for

T0 = "2026-01-01T00:00:00.000Z"


def at(seconds: float) -> str:
    """``T0`` plus ``seconds``, as ``now_iso`` stamps."""
    return f"2026-01-01T00:00:{seconds:06.3f}Z"


def decision(rung: int, trial: int, lane: int, decided: float = 0.0, rule: str = "draw") -> SweepDecision:
    return SweepDecision(
        rung=rung, trial=trial, lane=lane, seq=1, params={}, decided_at=at(decided), rule=rule
    )


def outcome(rung: int, trial: int, loss: float, duration: float = 0.5) -> ShardResult:
    return ShardResult(
        job_id="p",
        round=rung,
        shard_id=trial,
        task_type="train",
        status="succeeded",
        metrics={"loss": loss},
        duration_s=duration,
    )


def test_depth_is_the_round_trip_over_the_median_task_capped_and_zero_without_a_measurement() -> None:
    # GIVEN four tasks decided at 0 s, each worked 0.5 s, recorded 1.3–2.0 s after their decision
    decisions = [decision(0, t, t % 2) for t in range(4)]
    results = [outcome(0, t, 1.0) for t in range(4)]
    recorded = {(0, t): at(1.3 + 0.2 * t) for t in range(4)}
    # THEN the overheads are 0.8–1.5 s, the round trip their minimum (0.8 s: the task that did not
    # wait), and each lane holds ceil(0.8 / 0.5) = 2 tasks beyond its running one
    overheads = async_prefetch.overheads(decisions, results, recorded)
    assert [round(x, 3) for x in overheads] == [0.8, 1.0, 1.2, 1.4]
    assert async_prefetch.depth(decisions, results, recorded, lanes=2) == 2
    # capped, however slow the round trip
    slow = {(0, t): at(30.0) for t in range(4)}
    assert async_prefetch.depth(decisions, results, slow, lanes=2) == PREFETCH_CAP
    # at most 1 before MIN_SAMPLES (or every lane) reported: a minimum over few samples may
    # overstate the round trip; none below EARLY_SAMPLES (the first wave keeps max_parallel)
    assert async_prefetch.depth(decisions[:3], results[:3], recorded, lanes=2) == 1
    assert async_prefetch.depth(decisions, results, recorded, lanes=6) == 1
    assert async_prefetch.depth(decisions[:2], results[:2], recorded, lanes=2) == 1
    assert async_prefetch.depth(decisions[:1], results[:1], recorded, lanes=2) == 0
    # a redelivered task's outcome is no sample (its time includes its first worker's lease)
    redelivered = [replace(r, attempt=2) for r in results]
    assert async_prefetch.overheads(decisions, redelivered, recorded) == []
    assert async_prefetch.depth(decisions, redelivered, recorded, lanes=2) == 0
    # none when results come back sooner than the time they claim (no positive round trip) ...
    quick = {(0, t): at(0.4) for t in range(4)}
    assert async_prefetch.depth(decisions, results, quick, lanes=2) == 0
    # ... when no result reports its time, or when the stamps are missing
    untimed = [replace(r, duration_s=0.0) for r in results]
    assert async_prefetch.depth(decisions, untimed, recorded, lanes=2) == 0
    unstamped = [replace(d, decided_at="") for d in decisions]
    assert async_prefetch.depth(unstamped, results, recorded, lanes=2) == 0


def test_lane_slots_fill_the_emptiest_lanes_first_and_never_a_straggling_one() -> None:
    # GIVEN 3 lanes: lane 0 runs a task started 0.4 s ago, lane 1 one started 3 s ago (over twice
    # the median task time of 0.5 s: a straggler), lane 2 nothing
    in_flight = [decision(0, 0, 0, decided=9.6), decision(0, 1, 1, decided=7.0)]
    now = async_prefetch.epoch(at(10.0))
    results = [replace(outcome(0, t, 1.0), worker_id=f"w{t % 3}") for t in range(10, 13)]  # 3 workers
    # THEN without prefetch only the empty lane is free; with depth 1, lane 2 (its free worker
    # takes it at once) and one queued behind lane 0 (0.1 s left, within the horizon of one
    # median task); none behind the straggling lane 1, nor behind the task this pass sends to
    # lane 2 (any worker may take that one, a straggler too)
    assert async_prefetch.lane_slots(in_flight, results, 3, 0, now).free == [2]
    assert async_prefetch.lane_slots(in_flight, results, 3, 1, now).free == [2, 0]
    # a lane already at 1 + depth gets nothing more
    full = [*in_flight, decision(0, 2, 0, decided=9.7), decision(0, 3, 1, decided=9.8)]
    assert async_prefetch.lane_slots(full, results, 3, 1, now).free == [2]
    # with more lanes than workers, a spare lane's task waits in the queue for whichever worker
    # frees first: it is a prefetched task, one per lane ending within the horizon (lane 0), not
    # one per spare lane (a promotion decided meanwhile would wait behind every one of them). 6
    # lanes, 2 workers seen, and lanes 0 and 1 never reported (their tasks may run on workers not
    # seen yet): a fleet of 4, so 2 empty lanes are free workers' and 1 spare lane is prefetch
    two = results[:2]
    assert async_prefetch.lane_slots(in_flight, two, 6, 1, now).free == [2, 3, 4]
    # (unknown workers: every empty lane is a free worker's, plus the one behind lane 0)
    anonymous = [replace(r, worker_id=None) for r in results]
    assert async_prefetch.lane_slots(in_flight, anonymous, 6, 1, now).free == [2, 3, 4, 5, 0]


def test_no_task_is_prefetched_behind_a_straggling_worker() -> None:
    # GIVEN 2 lanes whose last outcomes came from worker "fast" (lane 0: 0.5 s) and worker "slow"
    # (lane 1: 5 s for the same rung), each lane running a task decided just now
    decisions = [
        decision(0, 0, 0, decided=1.0),
        decision(0, 1, 1, decided=1.0),
        decision(0, 2, 0, decided=9.9),
        decision(0, 3, 1, decided=9.9),
    ]
    results = [
        replace(outcome(0, 0, 1.0, duration=0.5), worker_id="fast"),
        replace(outcome(0, 1, 1.0, duration=5.0), worker_id="slow"),
        replace(outcome(0, 9, 1.0, duration=0.5), worker_id="other"),
    ]
    assert async_prefetch.paces(results) == {"fast": 1.0, "slow": 10.0, "other": 1.0}
    now = async_prefetch.epoch(at(10.0))
    # THEN prefetch (depth 2) fills only lane 0: a task queued behind the slow worker's lane would
    # wait its 10× task while the fast workers idle
    assert async_prefetch.lane_slots(decisions, results, 2, 2, now).free == [0, 0]
    # AND when the slow worker's lane is empty it still gets its one task (the worker is free),
    # but a promotion goes to the best other slot, behind the fast lane's running task
    slots = async_prefetch.lane_slots(decisions[:3], results, 2, 2, now)
    assert (slots.free, slots.slow) == ([1, 0, 0], {1})
    assert slots.promotion() == 0 and slots.trial() == 1


def test_a_slot_goes_to_the_lane_expected_to_free_soonest_by_its_running_tasks_rung() -> None:
    # GIVEN typical times of 0.5 s at rung 0 and 1.0 s at rung 1 (budgets 1/3/9: rungs add 1, 2, 6
    # epochs), and 2 lanes at 10 s: lane 0's rung-2 task was decided at 5 s but waited behind the
    # lane's rung-1 task, recorded at 9.8 s (so it started then: 6 × 0.5 s = 3 s to run, 2.8 s
    # left); lane 1's rung-1 task was decided at 9.2 s (0.2 s left)
    decisions = [
        decision(1, 0, 0, decided=4.0),
        decision(2, 1, 0, decided=5.0),
        decision(1, 2, 1, decided=9.2),
    ]
    results = [replace(outcome(0, t, 1.0, duration=0.5), worker_id=f"w{t % 2}") for t in range(3, 7)] + [
        replace(outcome(1, 0, 1.0, duration=1.0), worker_id="w0")
    ]
    recorded = {(1, 0): at(9.8)}
    now = async_prefetch.epoch(at(10.0))
    expected = async_prefetch.expected_times(results, [1, 2, 6])
    assert (expected(0), expected(1), expected(2)) == (0.5, 1.0, 3.0)
    # THEN the slot behind lane 1 comes first, though lane 0's task was decided longest ago, and
    # lane 0's rung-2 task, 0.2 s into its 3 s, is not straggling; with 2.8 s left, beyond the
    # horizon (one median task, 0.5 s), nothing is queued behind it: a later pass decides that
    # task, when a slot that frees sooner may take it
    slots = async_prefetch.lane_slots(decisions, results, 2, 1, now, recorded=recorded, added=[1, 2, 6])
    assert (slots.free, slots.slow) == ([1], frozenset())
    # (without the stamps it is taken to have run since its decision, 5 s of its 3 s, so due to
    # end now: the mistake the stamps correct)
    blind = async_prefetch.lane_slots(decisions, results, 2, 1, now, added=[1, 2, 6])
    assert (blind.free, blind.slow) == ([0, 1], frozenset())
    # AND a rung-1 task marks its lane straggling once it has run over twice its rung's typical
    # time (2 s), not the median task's (1 s): at 1.5 s it is a rung-1 task running its course
    late = [decision(1, 3, 0, decided=7.9), decision(0, 1, 1, decided=9.8)]
    slots = async_prefetch.lane_slots(late, results, 2, 1, now)
    assert (slots.free, slots.slow) == ([1], {0})
    running = [decision(1, 3, 0, decided=8.5), decision(0, 1, 1, decided=9.8)]
    slots = async_prefetch.lane_slots(running, results, 2, 1, now)
    assert (slots.free, slots.slow) == ([0, 1], frozenset())  # past its typical time: due first


def test_a_due_promotion_takes_the_freed_slot_not_a_prefetched_new_trial() -> None:
    # GIVEN 2 lanes holding 2 tasks each (depth 1: full), and rung 0 with 3 results, the best
    # (trial 0) not promoted yet
    request = TrainingRequest.from_dict(asha_sweep("p", trials=20, max_parallel=2))
    done = [outcome(0, 0, 1.0), outcome(0, 1, 3.0), outcome(0, 2, 2.0)]
    decided = [decision(0, t, t % 2) for t in range(7)]
    source = async_sweep.trial_source(request)
    # WHEN a pass runs with every lane full: it decides nothing (never more than the cap out)
    view = async_sweep.Pass(request, decided, done)
    assert async_sweep.plan_pass(view, source, 2, depth=1) == []
    # WHEN trial 3 (lane 1) reports: one slot frees
    view = async_sweep.Pass(request, decided, [*done, outcome(0, 3, 4.0)])
    new = async_sweep.plan_pass(view, source, 2, depth=1)
    # THEN the slot takes the due promotion, in the lane that freed, and no new trial
    assert [(d.rung, d.trial, d.lane, d.rule) for d in new] == [(1, 0, 1, "asha")]
    # AND with two slots free, the promotion takes the emptiest lane, the new trial the next
    view = async_sweep.Pass(request, decided, [*done, outcome(0, 3, 4.0), outcome(0, 4, 5.0)])
    new = async_sweep.plan_pass(view, source, 2, depth=1)
    assert [(d.rung, d.trial, d.lane) for d in new] == [(1, 0, 0), (0, 7, 1)]


def slow_worker_scene() -> tuple[list[SweepDecision], list[ShardResult], dict[tuple[int, int], str]]:
    """3 lanes, 3 workers, "slow" ten times slower than "a" and "b" (5 s tasks against 0.5 s): trial 2's
    outcome (the slow worker's, lane 2) recorded at 10.0 s; lane 0 runs trial 3 (since 9.5 s), lane 1
    is empty. Returns the decisions, the outcomes and their ``recorded_at`` stamps."""
    decisions = [decision(0, 0, 0), decision(0, 1, 1), decision(0, 2, 2), decision(0, 3, 0, decided=9.5)]
    results = [
        replace(outcome(0, 0, 1.0), worker_id="a"),
        replace(outcome(0, 1, 3.0), worker_id="b"),
        replace(outcome(0, 2, 2.0, duration=5.0), worker_id="slow"),
    ]
    return decisions, results, {(0, 0): at(9.5), (0, 1): at(9.9), (0, 2): at(10.0)}


def test_while_a_slow_worker_idles_a_promotion_waits_behind_a_fast_lane_not_in_an_empty_one() -> None:
    # GIVEN 3 lanes and 3 workers, "slow" ten times slower than "a" and "b": trial 2's outcome
    # (the slow worker's, lane 2) was recorded at 10.0 s and no task became available since, so
    # the slow worker is polling; lane 0 runs trial 3 (since 9.5 s, due now), lane 1 is empty
    request = TrainingRequest.from_dict(asha_sweep("p", trials=4, max_parallel=3))
    decisions, results, recorded = slow_worker_scene()
    now = async_prefetch.epoch(at(10.05))
    slots = async_prefetch.lane_slots(decisions, results, 3, 1, now, recorded=recorded, added=[1, 3, 9])
    assert (slots.free, slots.slow, slots.idle_slow) == ([1, 2, 0], {2}, 1)
    # WHEN a pass decides: trial 0's promotion is due (the best of rung 0's three), nothing is left
    # to draw
    view = async_sweep.Pass(request, decisions, results)
    source = async_sweep.trial_source(request)
    new = async_sweep.plan_pass(view, source, 2, depth=1, now=now, recorded=recorded)
    # THEN it waits behind lane 0's task, whose own worker takes it next, not in the empty lane 1,
    # where the polling slow worker would take it and run it ten times as long
    assert [(d.rung, d.trial, d.lane) for d in new] == [(1, 0, 0)]
    # AND with nothing fast in flight (no later pass would come) it takes the empty lane
    ended = [*results, replace(outcome(0, 3, 4.0), worker_id="a")]
    view = async_sweep.Pass(request, decisions, ended)
    new = async_sweep.plan_pass(view, source, 2, depth=1, now=now, recorded={**recorded, (0, 3): at(10.02)})
    assert [(d.rung, d.trial, d.lane) for d in new] == [(1, 0, 0)]


def test_a_slow_worker_is_presumed_gone_only_once_silent_past_a_task_it_could_have_taken() -> None:
    # GIVEN the slow worker's last outcome (its pace 10: 5 s tasks where the others take 0.5 s) at
    # 10.0 s, and the same lanes as above: no task became available to it since
    decisions, results, recorded = slow_worker_scene()

    def idle_slow(decided: list[SweepDecision], now: float) -> int:
        slots = async_prefetch.lane_slots(
            decided, results, 3, 1, async_prefetch.epoch(at(now)), recorded=recorded, added=[1, 3, 9]
        )
        return slots.idle_slow

    # THEN however long nothing was available to take, it is presumed polling, not gone (the
    # timer counts from the first task available to it, not from its last outcome)
    assert idle_slow(decisions, 19.0) == idle_slow(decisions, 40.0) == 1
    # GIVEN trial 4 available in lane 1 from 25.0 s: 5 s later (under twice its longest task, 10 s)
    # it may have taken it and is presumed idle until that shows ...
    later = [*decisions, decision(0, 4, 1, decided=25.0)]
    assert idle_slow(later, 30.0) == 1
    # ... and 15 s later, silent past any task it could have taken: presumed gone (a Spot
    # reclaim), the prefetch no longer holds lanes back for it
    assert idle_slow(later, 40.0) == 0


def test_a_task_already_waiting_when_a_slow_worker_frees_is_one_it_may_have_taken() -> None:
    # GIVEN a fleet of 3 and heads available at 1.0, 2.0 and 3.0 s (lanes 0-2), a worker freed at
    # 5.0 s: its two peers run two of them at most, so the newest (lane 2) was still waiting, and
    # the freed worker may have taken it, as any head available from 5.0 s on (less SETTLE_S)
    heads = [(1.0, 0), (2.0, 1), (3.0, 2), (4.9, 3), (6.0, 4)]
    assert async_prefetch.available_to(heads, 5.0, 3, frozenset()) == [2, 3, 4]
    # a straggling lane's head (lane 2) holds a worker of its own: one peer runs lane 0, lane 1
    # waits, and no straggling lane's task is one a freed worker takes
    assert async_prefetch.available_to(heads, 5.0, 3, frozenset({2})) == [1, 3, 4]
    # with a fleet that could run all of them, none was waiting
    assert async_prefetch.available_to(heads, 5.0, 4, frozenset()) == [3, 4]


def test_a_promotion_leaves_a_straggling_lanes_slot_to_a_new_trial() -> None:
    # GIVEN lane 1 last freed by a worker ten times slower, lane 0 busy on a fast one, and a
    # promotion due (trial 0, the best of rung 0's three) with trials left to draw
    request = TrainingRequest.from_dict(asha_sweep("p", trials=9, max_parallel=2))
    decisions = [decision(0, 0, 0), decision(0, 1, 1), decision(0, 2, 0), decision(0, 3, 0, decided=9.8)]
    results = [
        replace(outcome(0, 0, 1.0), worker_id="a"),
        replace(outcome(0, 2, 3.0), worker_id="a"),
        replace(outcome(0, 1, 2.0, duration=5.0), worker_id="slow"),
    ]
    view = async_sweep.Pass(request, decisions, results)
    new = async_sweep.plan_pass(view, async_sweep.trial_source(request), 2, depth=0)
    # THEN the straggling lane's slot takes a new trial; the promotion waits for a fast slot
    assert [(d.rung, d.trial, d.lane) for d in new] == [(0, 4, 1)]


def report_after(engine: Engine, clock: Clock, task: Any, wait_s: float) -> None:
    """Report ``task`` as having worked 10 ms, ``wait_s`` after it was taken (the round trip, on
    ``clock``), from one of two workers (lane ``trial % 2``'s)."""
    clock.advance(wait_s)
    result = replace(result_for(task, loss=loss_of(task)), duration_s=0.01, worker_id=f"w{task.shard_id % 2}")
    assert engine.ingest([Outcome(result)]) == []


def test_the_engine_prefetches_up_to_the_cap_and_runs_the_sweep_to_the_end(
    make_engine: Callable[..., Engine], clients: dict[str, Any], clock: Clock
) -> None:
    # GIVEN an 18-trial ASHA sweep with 2 lanes, whose tasks take 10 ms and come back 50 ms (on the
    # engine's controlled clock) after they were taken
    engine = make_engine(clock=clock)
    engine.submit(asha_sweep("pf", trials=18, max_parallel=2))
    running = take(engine, clients)
    assert len(running) == 2  # the first wave: nothing measured yet
    cap = 2 * (1 + PREFETCH_CAP)
    most, ran = 0, []
    while running:
        task = running.pop(0)
        report_after(engine, clock, task, 0.05)
        ran.append((task.round, task.shard_id))
        running.extend(take(engine, clients))
        # THEN never more than the cap is out, and no lane holds more than 1 + PREFETCH_CAP
        decisions = engine.store.sweep_decisions("pf")
        done = set(ran)
        out = [d for d in decisions if d.key not in done]
        assert len(out) == len(running) <= cap
        assert all(sum(1 for d in out if d.lane == lane) <= 1 + PREFETCH_CAP for lane in range(2))
        assert {d.lane for d in decisions} <= {0, 1}  # max_parallel lanes: the concurrency cap kept
        most = max(most, len(out))
    # AND it prefetched to the cap: the round trip (40 ms over 10 ms tasks) is measured on the
    # engine's clock alone (the decisions', the outcomes' and the pass's time), so the depth does
    # not depend on the machine's load
    assert most == cap
    # AND it ended as ASHA does: every trial once at rung 0, each decision once, the best trial at
    # the full budget
    job = engine.store.get_job("pf")
    assert job.status == "SUCCEEDED", job.error
    assert len(ran) == len(set(ran)) and sum(1 for r, _ in ran if r == 0) == 18
    assert any(r == 2 for r, _ in ran)
