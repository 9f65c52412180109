"""benchmarks.optuna_tpe's arithmetic: best-so-far curves, medians over seeds, the table's columns."""

from __future__ import annotations

import math

from benchmarks.optuna_tpe import best_after, checkpoints, curve, summary


def test_the_curve_keeps_the_best_finite_objective_so_far() -> None:
    points = curve([(1.0, None), (2.0, 0.9), (3.0, math.nan), (4.0, 1.2), (5.0, 0.4)])
    assert [p["best"] for p in points] == [None, 0.9, 0.9, 0.9, 0.4]
    assert [p["trial"] for p in points] == [1, 2, 3, 4, 5]


def test_the_summary_takes_each_methods_median_over_seeds_at_equal_trials() -> None:
    runs = [
        {
            "name": "tpe",
            "seed": s,
            "best": b[-1],
            "wall_s": w,
            "curve": curve([(t, v) for t, v in enumerate(b)]),
        }
        for s, b, w in ((0, [0.9, 0.5, 0.3], 3.0), (1, [0.8, 0.8, 0.6], 5.0), (2, [0.7, 0.4, 0.4], 4.0))
    ]
    (row,) = summary(runs, 3)
    assert row["seeds"] == [0, 1, 2] and row["wall_s"] == 4.0
    assert row["after_3"] == 0.4  # median of 0.3, 0.6, 0.4
    assert best_after(runs[0], 2) == 0.5
    assert checkpoints(40) == [8, 16, 24, 40] and checkpoints(12) == [8, 12]
