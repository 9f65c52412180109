"""The FedAvg comparison's verdicts (benchmarks.fedavg_report): each claim can fail (no torch needed)."""

from __future__ import annotations

from typing import Any

from benchmarks.fedavg_report import FIRST_ROUND_RTOL, checks, render, rounds_to


def run(acc: list[float]) -> dict[str, Any]:
    rows = [
        {"round": r, "test_accuracy": a, "round_s": 2.0, "slowest_train_s": 1.0, "overhead_s": 1.0,
         "busy_train_s": 1.5, "busy_overhead_s": 0.5, "mean_train_s": 0.3}
        for r, a in enumerate(acc)
    ]  # fmt: skip
    return {"rounds": rows, "total_s": 10.0}


def drift(values: list[float]) -> list[dict[str, float]]:
    return [{"round": r, "max_abs_diff": v, "max_rel_diff": v} for r, v in enumerate(values)]


def result() -> dict[str, Any]:
    iid, noniid = [0.80, 0.90, 0.955], [0.40, 0.70, 0.86]
    equal = {"vs_reference": drift([0.0] * 3), "vs_flower": drift([1e-8, 1e-4, 1e-3])}
    return {
        "config": {"arch": "cnn", "clients": 10, "rounds": 3, "epochs": 5, "batch_size": 10, "lr": 0.05,
                   "seed": 0, "workers": 2},
        "machine": {"commit": "abc1234", "cpus": 2},
        "centralized": {"accuracy": [0.95, 0.96, 0.96], "final": 0.96, "seconds": 5.0},
        "shardq": {"iid": run(iid), "noniid": run(noniid)},
        "flower": {"iid": run(iid), "noniid": run(noniid)},
        "equivalence": {"iid": {**equal, "nudged_reference": drift([1e-3] * 3)}, "noniid": equal},
    }  # fmt: skip


def test_rounds_to_target_is_the_first_round_reaching_it() -> None:
    assert rounds_to([0.5, 0.91, 0.89, 0.95], 0.9) == 2
    assert rounds_to([0.5, 0.6], 0.9) is None


def test_a_run_that_shows_every_claim_passes() -> None:
    report, ok = render(result(), [0.85, 0.9])
    assert ok, report
    assert "| shardq iid | 95.5 | 2 | 2 |" in report
    assert "| shardq noniid | 86.0 | 3 | > 3 |" in report
    assert "- iid: largest per-round test-accuracy gap between shardq and Flower 0.0 points" in report


def test_each_claim_fails_on_its_own() -> None:
    short = result()  # IID ends 1.5 points under centralized
    short["shardq"]["iid"] = run([0.80, 0.90, 0.945])
    assert checks(short, [0.9])[0][0] is False
    inexact = result()  # shardq differs from the plain loop
    inexact["equivalence"]["iid"]["vs_reference"] = drift([0.0, 1e-9, 0.0])
    assert not all(ok for ok, _ in checks(inexact, [0.9]))
    loose = result()  # more than one ulp apart after round 1
    loose["equivalence"]["noniid"]["vs_flower"] = drift([4 * FIRST_ROUND_RTOL, 0.0, 0.0])
    assert not all(ok for ok, _ in checks(loose, [0.9]))
    fast = result()  # non-IID faster than IID contradicts the paper
    fast["shardq"]["noniid"] = run([0.95, 0.96, 0.96])
    assert not all(ok for ok, _ in checks(fast, [0.9]))


def test_a_quick_run_reports_but_does_not_judge_accuracy() -> None:
    quick = result()
    quick["config"]["quick"] = True
    quick["shardq"]["iid"] = run([0.2, 0.3, 0.35])
    verdicts = checks(quick, [0.9])
    assert verdicts[0][0] and verdicts[0][1].startswith("not checked in a --quick run")
