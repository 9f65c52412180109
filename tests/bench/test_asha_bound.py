"""``benchmarks.asha_bound``: the paper's ASHA rule simulated on the sweep benchmark's workers."""

from __future__ import annotations

from benchmarks.asha_bound import simulate
from benchmarks.async_sweep import figures

SPEC = {
    "speeds": [1.0, 1.0, 1.0, 10.0],
    "unit_s": 0.5,
    "budgets": [1, 3, 9],
    "eta": 3,
    "workers": 4,
    "points": [{}] * 9,
    "one_full_s": 4.5,
}
# Trial t's val_loss at each rung: trial 0 best, then 1, ... (lower is better)
VALUES = {t: [1.0 + t, 0.5 + t, 0.25 + t] for t in range(9)}


def test_the_rule_runs_every_trial_once_and_promotes_to_a_rung_only_after_eta_results() -> None:
    free = simulate(SPEC, VALUES, 0.0)
    keys = [(r["rung"], r["trial"]) for r in free]
    assert len(keys) == len(set(keys))  # each task once
    assert sorted(t for r, t in keys if r == 0) == list(range(9))  # every trial at rung 0
    assert (2, 0) in keys  # the best trial reaches the full budget
    # the paper's rule: the first rung-2 task starts once rung 1 has eta = 3 results
    first_top = min(r["start"] for r in free if r["rung"] == 2)
    assert sum(1 for r in free if r["rung"] == 1 and r["end"] <= first_top) >= 3
    # a round trip between each task's end and the next start idles the workers, and delays the
    # first fully trained configuration
    f = figures(SPEC, free, 0.0)
    slow = figures(SPEC, simulate(SPEC, VALUES, 1.0), 0.0)
    assert slow["idle_while_work"] > f["idle_while_work"]
    assert slow["first_full_s"] > f["first_full_s"]


def test_the_eager_rule_takes_the_first_trial_to_the_full_budget_at_once() -> None:
    paper, eager = simulate(SPEC, VALUES, 0.0), simulate(SPEC, VALUES, 0.0, "eager")
    keys = [(r["rung"], r["trial"]) for r in eager]
    assert len(keys) == len(set(keys)) and sorted(t for r, t in keys if r == 0) == list(range(9))
    # on workers of distinct speeds, the first trial's rung-1 task starts as soon as its rung 0
    # ends, with 1 result at rung 0 (the paper's rule waits for eta = 3)
    spec = {**SPEC, "speeds": [0.9, 1.0, 1.1, 10.0]}
    distinct = simulate(spec, VALUES, 0.0, "eager")
    first = min((r for r in distinct if r["rung"] == 1), key=lambda r: r["start"])
    assert [r["end"] for r in distinct if r["rung"] == 0 and r["end"] <= first["start"]] == [first["start"]]
    # so the first fully trained configuration comes after one configuration's time on a typical
    # worker (4.5 s), sooner than the paper's rule allows, at the price of more trial-epochs
    f, p = figures(SPEC, eager, 0.0), figures(SPEC, paper, 0.0)
    assert f["first_full_s"] == SPEC["one_full_s"] < p["first_full_s"]
    assert f["trial_epochs"] >= p["trial_epochs"]
