"""Successive halving in Optuna (``SuccessiveHalvingPruner``) on shardq's search space and objective.

Each Optuna trial trains ``examples.linear.train`` in this process, rung by rung, exactly as a
shardq trial does on a worker: rung ``k`` trains the budget increment over rung ``k - 1`` from
that rung's model, with ``task.round = k`` and ``task.shard_id = trial number`` (the example
seeds its minibatch order with both), and reports the validation loss at the rung's budget
(``trial.report(value, step=budget)``) before ``trial.should_prune()``. With shardq's points
enqueued (``study.enqueue_trial``), trial ``i`` of both systems trains the same model, bit for
bit: what differs is only who gets promoted.

Optuna is optional (``requirements-optuna.txt``); ``available()`` says whether it imports.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from examples import linear


def available() -> bool:
    """Whether Optuna imports here."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        return False
    return True


def train_rung(
    base: dict[str, Any],
    params: dict[str, Any],
    trial: int,
    rung: int,
    epochs: int,
    init: Path | None,
    out: Path,
) -> float:
    """Train ``epochs`` epochs of trial ``trial``'s rung ``rung`` from ``init``; the validation loss.

    ``base`` holds the dataset (``uri``, ``num_samples``) and the request's hyperparameters;
    the model lands in ``out/model.npz``.
    """
    out.mkdir(parents=True, exist_ok=True)
    task = SimpleNamespace(
        data={"uri": base["uri"], "start": 0, "end": base["num_samples"]},
        hyperparameters={**base["hyperparameters"], **params, "epochs": epochs},
        round=rung,
        shard_id=trial,
    )
    # A fresh attempt that is never told to stop: what examples.linear's checkpointing reads.
    ctx = SimpleNamespace(
        init_model_path=init, output_dir=out, progress=lambda fraction: None,
        resume_path=None, resume_step=None, should_stop=False,
    )  # fmt: skip
    return float(linear.train(task, ctx)["metrics"]["val_loss"])


def _suggest(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    """shardq's search space in Optuna's terms (same names, bounds and scales)."""
    params: dict[str, Any] = {}
    for name, dim in space.items():
        if isinstance(dim, list):
            params[name] = trial.suggest_categorical(name, dim)
            continue
        ((dist, (low, high)),) = dim.items()
        if dist == "int_uniform":
            params[name] = trial.suggest_int(name, int(low), int(high))
        else:
            params[name] = trial.suggest_float(name, low, high, log=dist == "log_uniform")
    return params


def optuna_halving(
    base: dict[str, Any],
    space: dict[str, Any],
    budgets: list[int],
    eta: int,
    num_trials: int,
    seed: int,
    points: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run ``num_trials`` trials under ``SuccessiveHalvingPruner(min_resource=budgets[0], eta)``.

    ``points``: shardq's trials, enqueued in order (else Optuna's ``RandomSampler(seed)`` picks).
    Returns trial-epochs spent, the best trial, each trial's furthest budget and value per rung.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.RandomSampler(seed=seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(
            min_resource=budgets[0], reduction_factor=eta, min_early_stopping_rate=0
        ),
    )
    for point in points or []:
        study.enqueue_trial(point)
    reached: dict[int, int] = {}
    values: dict[int, list[float]] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="shardq-optuna-") as tmp:

        def objective(trial: Any) -> float:
            params = _suggest(trial, space)
            model: Path | None = None
            done, value = 0, float("nan")
            for rung, budget in enumerate(budgets):
                out = Path(tmp) / f"trial-{trial.number}" / f"rung-{rung}"
                value = train_rung(base, params, trial.number, rung, budget - done, model, out)
                model, done = out / "model.npz", budget
                reached[trial.number] = budget
                values.setdefault(trial.number, []).append(value)
                trial.report(value, step=budget)
                if rung < len(budgets) - 1 and trial.should_prune():
                    raise optuna.TrialPruned()
            return value

        study.optimize(objective, n_trials=num_trials)
    best = study.best_trial
    return {
        "sampler": "shardq's points, enqueued" if points else f"RandomSampler(seed={seed})",
        "trial_epochs": sum(reached.values()),
        "trials_at_budget": {b: sum(1 for v in reached.values() if v >= b) for b in budgets},
        "best_trial": best.number,
        "best_objective": best.value,
        "best_params": best.params,
        "reached": reached,
        "rung_values": values,
        "seconds": round(time.monotonic() - started, 2),
        "optuna": optuna.__version__,
    }
