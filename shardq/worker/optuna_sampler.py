"""Optuna's samplers on the workers: ask a trial by replaying the sweep's ask/tell log.

An Optuna sweep (``search.method "optuna"``) draws each trial in the aggregator without Optuna:
the trial source (``shardq.core.optuna_search``) writes down *when* the trial was asked — after
which results — and the task carries the job's ask/tell log up to that ask
(``hyperparameters["shardq_optuna"]``). The worker that receives it asks Optuna here:

1. a fresh in-memory study (``optuna.create_study``, no database) with the seeded sampler;
2. the log replayed in order: ``ask`` → ``study.ask(distributions)``, ``tell`` →
   ``study.tell(number, value | state)``, ``report`` → ``trial.report(value, step)``;
3. the last ``ask`` is this task's trial: its params are what the sampler asked.

The replay *is* Optuna's own ask/tell loop on the same events, so given the same history and seed
the trial equals what Optuna asks in-process, for every sampler: TPE's two random states,
CMA-ES's optimizer (kept in the trials' system attributes), the GP's warm-started kernel
parameters all evolve exactly as in one process. Rebuilding a study with ``add_trial`` and a fresh
``sampler(seed)`` would not: each rebuilt sampler starts its random state over (a random
sampler would ask the same point every time).

A replay costs the asks before it. The process keeps its last replayed study per job
(``Replayer``): a log that extends it replays only the new events, one that is a prefix of it is
answered from the asks already made, anything else (another job, a different history) starts over.
With ``N`` workers a warm worker replays about ``N`` asks per trial.

Every replayed ask is checked against the params the trial reported when it ran (the log carries
them when known): a mismatch means workers with different Optuna versions, and fails loudly
instead of silently asking from a different history.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

from shardq.core.contracts import ShardTask

# The hyperparameter key of an Optuna trial's log in a task (shardq.core.optuna_search.TRIAL_KEY;
# repeated here so the worker does not import the trial source).
TRIAL_KEY = "shardq_optuna"
# What a failed ask's error starts with (the job's failure names it).
SAMPLER_FAILED = "optuna sampler failed"
# Jobs whose replayed study one worker process keeps.
CACHED_STUDIES = 4
INSTALL_HINT = "install Optuna on the workers: pip install -r requirements-optuna.txt (make optuna)"


class SamplerError(RuntimeError):
    """The sampler could not ask the trial (Optuna missing, a sampler's own error, a replay that
    disagrees with the trials' recorded params). The message starts with ``SAMPLER_FAILED``."""

    def __init__(self, detail: str, *, permanent: bool = True) -> None:
        super().__init__(f"{SAMPLER_FAILED}: {detail}")
        # The same log asks the same way on every worker: a sampler's error fails every attempt.
        # Optuna missing on this worker is not: another worker of the fleet may have it.
        self.permanent = permanent


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:
        raise SamplerError(f"optuna is not installed here ({exc}); {INSTALL_HINT}", permanent=False) from exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def distributions(space: dict[str, Any]) -> dict[str, Any]:
    """shardq's search space as Optuna's distributions, by parameter name.

    A list → ``CategoricalDistribution`` (its values as given); ``uniform`` →
    ``FloatDistribution``; ``log_uniform`` → ``FloatDistribution(log=True)``; ``int_uniform`` →
    ``IntDistribution``. Name order, because the stored request's JSON sorts its keys: the sampler
    asks the parameters as an in-process objective calling ``trial.suggest_*`` in name order does
    (the order draws an independent sampler's random numbers in).
    """
    d = _optuna().distributions
    out: dict[str, Any] = {}
    for name, dim in sorted(space.items()):
        if isinstance(dim, list):
            out[name] = d.CategoricalDistribution(dim)
            continue
        ((kind, (low, high)),) = dim.items()
        if kind == "int_uniform":
            out[name] = d.IntDistribution(int(low), int(high))
        else:
            out[name] = d.FloatDistribution(float(low), float(high), log=kind == "log_uniform")
    return out


def make_sampler(name: str, seed: int) -> Any:
    """Optuna's sampler ``name`` (``tpe``, ``cmaes``, ``gp``, ``random``) with ``seed``, defaults
    otherwise (what ``optuna.samplers.XSampler(seed=seed)`` gives in-process)."""
    samplers = _optuna().samplers
    factory = {
        "tpe": samplers.TPESampler,
        "cmaes": samplers.CmaEsSampler,
        "gp": samplers.GPSampler,
        "random": samplers.RandomSampler,
    }.get(name)
    if factory is None:
        raise SamplerError(f"unknown sampler {name!r}; use tpe, cmaes, gp or random")
    return factory(seed=seed)


def direction_of(direction: str) -> str:
    """shardq's objective direction as Optuna's."""
    return "maximize" if direction == "maximize" else "minimize"


@dataclass
class _Study:
    """One job's replayed study: the events applied so far and the params each ask returned."""

    header: tuple[Any, ...]
    study: Any
    dists: dict[str, Any]
    events: list[list[Any]] = field(default_factory=list)
    asked: dict[int, dict[str, Any]] = field(default_factory=dict)
    trials: dict[int, Any] = field(default_factory=dict)


def _header(log: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two logs the same study: sampler, seed, direction and space."""
    import json

    return (log["sampler"], int(log["seed"]), log["direction"], json.dumps(log["space"], sort_keys=True))


class Replayer:
    """Asks trials by replay, keeping each job's last replayed study (``CACHED_STUDIES`` jobs)."""

    def __init__(self, capacity: int = CACHED_STUDIES) -> None:
        self.capacity = capacity
        self._studies: OrderedDict[str, _Study] = OrderedDict()
        # A worker runs several tasks at once (slots, threads): one ask at a time moves a study.
        self._lock = threading.Lock()
        # Events applied by the last ask (how much replay it cost): for tests and the benchmark.
        self.last_replayed = 0

    def ask(self, log: dict[str, Any], job_id: str = "") -> dict[str, Any]:
        """The params of the trial the log's last event asks.

        ``log``: ``{"sampler", "seed", "direction", "space", "events", "params"?}`` (see
        ``shardq.core.optuna_search.task_log``). Raises ``SamplerError``.
        """
        with self._lock:
            return self._ask(log, job_id)

    def _ask(self, log: dict[str, Any], job_id: str) -> dict[str, Any]:
        events = log.get("events") or []
        if not events or events[-1][0] != "ask":
            raise SamplerError("the trial's log does not end with its ask; the task is malformed")
        trial = int(events[-1][1])
        state = self._study_for(job_id, log, events)
        try:
            self.last_replayed = len(events) - len(state.events)
            for event in events[len(state.events) :]:
                self._apply(state, event)
                state.events.append(event)
        except SamplerError:
            self._studies.pop(job_id, None)
            raise
        except Exception as exc:
            self._studies.pop(job_id, None)
            name = log.get("sampler")
            raise SamplerError(f"sampler {name!r} raised {type(exc).__name__}: {exc}") from exc
        self._check(state, log.get("params") or {})
        return dict(state.asked[trial])

    def _study_for(self, job_id: str, log: dict[str, Any], events: list[list[Any]]) -> _Study:
        """The cached study when the log extends (or is a prefix of) its events, else a new one."""
        header = _header(log)
        cached = self._studies.get(job_id)
        if cached is not None and cached.header == header:
            n = min(len(events), len(cached.events))
            if events[:n] == cached.events[:n]:
                self._studies.move_to_end(job_id)
                if len(events) <= len(cached.events):
                    # A prefix: every ask in it is made already (a promoted trial's own log).
                    return _Study(
                        header, cached.study, cached.dists, list(events), cached.asked, cached.trials
                    )
                return cached
        optuna = _optuna()
        try:
            sampler = make_sampler(log["sampler"], int(log["seed"]))
            study = optuna.create_study(
                storage=optuna.storages.InMemoryStorage(),
                sampler=sampler,
                direction=direction_of(log["direction"]),
            )
            dists = distributions(log["space"])
        except SamplerError:
            raise
        except Exception as exc:
            name = log.get("sampler")
            raise SamplerError(f"sampler {name!r} could not start: {type(exc).__name__}: {exc}") from exc
        state = _Study(header, study, dists)
        self._studies[job_id] = state
        self._studies.move_to_end(job_id)
        while len(self._studies) > self.capacity:
            self._studies.popitem(last=False)
        return state

    @staticmethod
    def _apply(state: _Study, event: list[Any]) -> None:
        """One event of the log, as Optuna's own loop would do it."""
        optuna = _optuna()
        kind, number = event[0], int(event[1])
        if kind == "ask":
            trial = state.study.ask(state.dists)
            if trial.number != number:
                raise SamplerError(f"the log asks trial {number} where Optuna's next trial is {trial.number}")
            state.trials[number] = trial
            state.asked[number] = dict(trial.params)
        elif kind == "report":
            state.trials[number].report(float(event[3]), int(event[2]))
        elif kind == "tell":
            outcome = event[2]
            if outcome == "complete":
                state.study.tell(number, float(event[3]))
            elif outcome == "pruned":
                state.study.tell(number, state=optuna.trial.TrialState.PRUNED)
            else:
                state.study.tell(number, state=optuna.trial.TrialState.FAIL)
        else:
            raise SamplerError(f"unknown event {kind!r} in the trial's log")

    @staticmethod
    def _check(state: _Study, known: dict[str, Any]) -> None:
        """Each trial's replayed params against the params it reported when it ran."""
        import optuna

        for key, params in known.items():
            asked = state.asked.get(int(key))
            if asked is None:
                continue
            same = asked.keys() == params.keys() and all(_same(asked[k], params[k]) for k in asked)
            if not same:
                raise SamplerError(
                    f"replaying trial {key} asked {asked}, but it trained {params}: the workers run "
                    f"different Optuna versions (this one: {optuna.__version__}); pin "
                    "requirements-optuna.txt on every worker"
                )


def _same(a: Any, b: Any) -> bool:
    """Equal, with floats compared to the last few bits (JSON round trips are exact; be lenient)."""
    if isinstance(a, float) and isinstance(b, int | float) and not isinstance(b, bool):
        return math.isclose(a, float(b), rel_tol=1e-12, abs_tol=0.0)
    return bool(a == b)


# One replayer per worker process: its cache is what makes a warm worker's ask cheap.
_REPLAYER = Replayer()


def resolve(job_id: str, hyperparameters: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A task's hyperparameters with its Optuna trial asked: ``(hyperparameters, asked params)``.

    Hyperparameters without ``TRIAL_KEY`` come back as they are, with None. Raises ``SamplerError``.
    """
    log = hyperparameters.get(TRIAL_KEY)
    if log is None:
        return hyperparameters, None
    if not isinstance(log, dict):
        got = type(log).__name__
        raise SamplerError(f"hyperparameters.{TRIAL_KEY} must be the trial's log object, got {got}")
    params = _REPLAYER.ask(log, job_id)
    rest = {k: v for k, v in hyperparameters.items() if k != TRIAL_KEY}
    return {**rest, **params}, params


def resolve_task(task: ShardTask) -> tuple[ShardTask, dict[str, Any] | None]:
    """``task`` with its Optuna trial's params asked (``resolve``), and those params (None: not an
    Optuna trial, the task as it is)."""
    hyperparameters, asked = resolve(task.job_id, task.hyperparameters)
    return (task, None) if asked is None else (replace(task, hyperparameters=hyperparameters), asked)


__all__ = [
    "SAMPLER_FAILED",
    "TRIAL_KEY",
    "Replayer",
    "SamplerError",
    "distributions",
    "make_sampler",
    "resolve",
    "resolve_task",
]
