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
