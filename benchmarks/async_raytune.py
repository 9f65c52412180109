"""Ray Tune's ``ASHAScheduler`` on shardq's sweep, for ``benchmarks.async_sweep`` (run in ``.venv/raytune``).

    PYTHONPATH=. .venv/raytune/bin/python -m benchmarks.async_raytune WORKDIR

``WORKDIR/spec.json`` is ``benchmarks.async_sweep.spec`` (points, budgets, eta, speeds, unit_s,
workers, base). Trial ``i`` is shardq's point ``i`` (a grid over the indices, in order) and trains
rung by rung with ``benchmarks.rounds_peer.train_rung``, as a shardq trial and the Optuna adapter
do, reporting ``val_loss`` at each rung's budget (``time_attr="epochs"``, so ASHA's milestones
are exactly the budgets). ``max_concurrent_trials`` is the number of workers and Ray gets that
many logical CPUs: four emulated GPUs.

Worker speeds: a trial holds one of ``workers`` slots while it runs (``Slots``: the lowest free one,
claimed under a file lock) and sleeps by that slot's factor; the driver frees the slot when the
trial ends, whether it finished or ASHA stopped it (``on_trial_complete`` / ``on_trial_error``).
So a new trial runs at the speed of the worker that just came free, as on a real cluster.

Writes ``WORKDIR/busy.jsonl`` (each rung's busy interval), ``values.jsonl`` and ``result.json``
(``t0``: ``time.time()`` when ``Tuner.fit`` was called; Ray's start-up before it, timed apart).
Imports only numpy, Ray and the light ``benchmarks``/``examples`` modules (no boto3 in this venv).
"""

from __future__ import annotations

import fcntl
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.async_workload import Busy
from benchmarks.rounds_peer import train_rung

CLAIM_TIMEOUT_S = 120.0


class Slots:
    """``n`` worker slots as files in ``root``: ``slot-K`` holds the id of the trial on worker ``K``."""

    def __init__(self, root: Path, n: int) -> None:
        self.root, self.n = root, n
        root.mkdir(parents=True, exist_ok=True)

    def _locked(self) -> Any:
        f = (self.root / "lock").open("a")
        fcntl.flock(f, fcntl.LOCK_EX)
        return f

    def claim(self, trial_id: str) -> int:
        """The lowest free slot, now ``trial_id``'s; waits for one (a trial ending frees it)."""
        end = time.monotonic() + CLAIM_TIMEOUT_S
        while time.monotonic() < end:
            f = self._locked()
            try:
                for k in range(self.n):
                    path = self.root / f"slot-{k}"
                    if not path.exists() or path.read_text() == trial_id:
                        path.write_text(trial_id)
                        return k
            finally:
                f.close()
            time.sleep(0.01)
        raise TimeoutError(f"no free worker slot for trial {trial_id} within {CLAIM_TIMEOUT_S:.0f} s")

    def release(self, trial_id: str) -> None:
        """Free whichever slot ``trial_id`` holds."""
        f = self._locked()
        try:
            for k in range(self.n):
                path = self.root / f"slot-{k}"
                if path.exists() and path.read_text() == trial_id:
                    path.unlink()
        finally:
            f.close()


def main(argv: list[str] | None = None) -> int:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    work = Path((argv or sys.argv[1:])[0]).resolve()
    s = json.loads((work / "spec.json").read_text())
    slots = Slots(work / "slots", s["workers"])
    busy_path, values_path = work / "busy.jsonl", work / "values.jsonl"

    def trainable(config: dict[str, Any]) -> None:
        trial_id = tune.get_context().get_trial_id()
        t = int(config["trial"])
        params = s["points"][t]
        w = slots.claim(trial_id)
        busy = Busy(busy_path)
        model, done = None, 0
        for rung, budget in enumerate(s["budgets"]):
            out = work / "models" / f"trial-{t}" / f"rung-{rung}"
            with busy.task(w, trial=t, rung=rung, epochs=budget - done):
                time.sleep(s["unit_s"] * (budget - done) * s["speeds"][w])
                value = train_rung(s["base"], params, t, rung, budget - done, model, out)
            model, done = out / "model.npz", budget
            with values_path.open("a") as f:
                f.write(json.dumps({"trial": t, "rung": rung, "value": value}) + "\n")
            tune.report({"val_loss": value, "epochs": budget})

    class FreeSlot(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            slots.release(trial.trial_id)

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            slots.release(trial.trial_id)

    began = time.time()
    ray.init(num_cpus=s["workers"], include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray_init_s = time.time() - began
    scheduler = ASHAScheduler(
        time_attr="epochs", metric="val_loss", mode="min", max_t=s["budgets"][-1],
        grace_period=s["budgets"][0], reduction_factor=s["eta"], brackets=1,
    )  # fmt: skip
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(list(range(len(s["points"]))))},
        # reuse_actors: a trial of a few seconds would otherwise wait for a new actor process (about
        # 10 s each on two busy cores); Ray's docs advise it for many short trials.
        tune_config=tune.TuneConfig(
            scheduler=scheduler, max_concurrent_trials=s["workers"], reuse_actors=True
        ),
        run_config=tune.RunConfig(storage_path=str(work / "ray_results"), verbose=0, callbacks=[FreeSlot()]),
    )
    t0 = time.time()
    grid = tuner.fit()
    fit_s = time.time() - t0
    errors = [str(r.error) for r in grid if r.error is not None]
    values: dict[int, list[float]] = {}
    for line in values_path.read_text().splitlines():
        row = json.loads(line)
        values.setdefault(row["trial"], []).append(row["value"])
    result = {"t0": t0, "fit_s": fit_s, "ray_init_s": ray_init_s, "ray": ray.__version__,
              "values": values, "errors": errors}  # fmt: skip
    (work / "result.json").write_text(json.dumps(result))
    ray.shutdown()
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
