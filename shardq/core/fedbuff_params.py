"""FedBuff's request parameters: names, defaults, ranges, the staleness weight s(τ), each version's
server step size (``server_lr_schedule``) and where the versions' moving average lives
(``model_average``).

Dependency-free (the request parser imports it); ``shardq.core.fedbuff`` runs the jobs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

NAME = "fedbuff"
STALENESS_FUNCTIONS = ("polynomial", "constant", "hinge")
# The server step's calibration: "none" is FedBuff as the paper states it; "cached" is CA2FL's
# cached update calibration (Wang et al., ICLR 2024; ``shardq.worker.fedbuff_cached``).
CALIBRATIONS = ("none", "cached")
# How a calibrated step weights the clients' cached mean h̄: "staleness" weights each update's whole
# calibrated estimate h̄ + Δ_i − h_{c(i)} by n_i·s(τ_i)/Σn, as FedBuff weights the update itself (h̄
# counts the buffer's mean staleness weight; ``shardq.worker.fedbuff_cached``); "full" applies h̄ at
# weight 1 whatever the buffer's staleness (the rule before; CA2FL's paper has no staleness weights).
CACHE_WEIGHTS = ("staleness", "full")
# The server step size over the job: "constant" is ``server_lr`` at every version (FedBuff's); "cosine"
# and "linear" decay it from ``server_lr`` at version 0 to ``server_lr × server_lr_floor`` at the last
# version (``rounds`` − 1), as SGD's learning rate is annealed over a known budget: the last versions
# move by a fraction of a buffer, so the job's model averages the last clients' directions instead of
# following the last buffer (``server_lr_at``).
SERVER_LR_SCHEDULES = ("constant", "cosine", "linear")
# The model the job returns and each version's reduce scores: "none" is the last version; "ema" is
# an exponential moving average of the versions (x̄_{v+1} = d·x̄_v + (1 − d)·x_{v+1}, x̄_1 = x_1,
# d = ``ema_decay``), model EMA / FedAvg + SWA's server-side average: with non-IID clients each
# version leans toward the clients of its last buffers, the average of the recent versions does
# not. Kept as its own artifact (``AVERAGE_DIR`` beside each version's model); the versions, and
# so the clients' next tasks, are the server steps as before (``average_section``).
# "polynomial": Shamir & Zhang's polynomial-decay averaging (ICML 2013), x̄_t = (1 − w_t)·x̄_{t−1} +
# w_t·x_t with w_t = (η + 1)/(t + η) at the job's t-th version (η = ``average_eta``): version i
# weighs ∝ i(i+1)…(i+η−1) ≈ (i/t)^η (whole η), so the average's mean age is ≈ t/(η + 2) versions: a
# window that grows with the job (a few versions early, as an EMA; dozens in a long run, longer than
# the swing an EMA follows). η = 0 is the uniform mean of every version (Polyak–Ruppert); η → ∞
# the last version (``average_decay_at``).
MODEL_AVERAGES = ("none", "ema", "polynomial")
AVERAGE_DIR = "average/"
# The request's string parameters and their defaults (the numeric ones are DEFAULTS below).
CHOICES: dict[str, tuple[tuple[str, ...], str]] = {
    "staleness": (STALENESS_FUNCTIONS, "polynomial"),
    "calibration": (CALIBRATIONS, "none"),
    "cache_weight": (CACHE_WEIGHTS, "staleness"),
    "server_lr_schedule": (SERVER_LR_SCHEDULES, "constant"),
    "model_average": (MODEL_AVERAGES, "none"),
}
# What a choice means, appended to the problem when a request names another.
CHOICE_HELP = {
    "calibration": ' ("cached": CA2FL\'s cached update calibration for non-IID clients; "none": FedBuff)',
    "cache_weight": (
        ' (with calibration "cached": "staleness" weights the clients\' cached mean like the buffer\'s '
        'updates, by s(τ), stable when updates are stale; "full": the cached mean at weight 1)'
    ),
    "server_lr_schedule": (
        ' ("constant": server_lr at every version; "cosine" or "linear": from server_lr down to '
        "server_lr × server_lr_floor at the job's last version)"
    ),
    "model_average": (
        ' ("none": the job returns its last version; "ema": a moving average of its versions, weight '
        'ema_decay on the average so far; "polynomial": the polynomial-decay average of its versions, '
        "weighted toward the last ones (mean age 1/(average_eta + 2) of them); the average is what "
        "each version's reduce scores and the job returns)"
    ),
}
# Numeric parameters and their defaults. FLSim's FedBuff: polynomial staleness weight with exponent
# 0.5 (``PolynomialStalenessWeightConfig.exponent``; the paper's s(τ) = 1/(1+τ)^0.5), a plain
# server step (FedAvg's, rate 1). Hinge: FedAsync's s(τ) = 1 for τ ≤ b, 1/(a(τ − b) + 1) after,
# with the paper's a = 10, b = 4. ``buffer_size`` 10 is the paper's K. ``server_lr_floor``: the last
# version's step size as a fraction of ``server_lr`` under a decaying ``server_lr_schedule``.
# ``average_eta`` 2: the average's mean age is a quarter of the versions (12 of 48, 48 of 192);
# measured against 1, 3, 5 and EMAs in BENCHMARKS §19 (docs/ARCHITECTURE.md, "The job's model").
DEFAULTS: dict[str, float] = {
    "buffer_size": 10,
    "staleness_exponent": 0.5,
    "max_staleness": 100,
    "server_lr": 1.0,
    "hinge_a": 10.0,
    "hinge_b": 4,
    "server_lr_floor": 0.5,
    "ema_decay": 0.8,
    "average_eta": 2.0,
}
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "buffer_size": (1, 100_000, False, False),
    "staleness_exponent": (0.0, 1.0, False, False),
    "max_staleness": (0, 1_000_000, False, False),
    "server_lr": (0.0, 1e3, True, False),
    "hinge_a": (0.0, 1e6, False, False),
    "hinge_b": (0, 1_000_000, False, False),
    "server_lr_floor": (0.0, 1.0, True, False),
    "ema_decay": (0.0, 1.0, False, True),
    "average_eta": (0.0, 1e6, False, False),
}
INTEGERS = ("buffer_size", "max_staleness", "hinge_b")
# Why a bound is open, said with the refusal (the fix).
RANGE_HELP = {
    "server_lr_floor": (
        ": 0 would make the last version's step 0 and discard its buffer's paid updates; use a small "
        'positive floor (e.g. 0.05) or server_lr_schedule "constant"'
    ),
}
# Numeric parameters only a choice uses: (that choice, the values that use it). A request naming one
# without them is refused (it would be ignored), and a job's parameters hold it only with them.
NEEDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "server_lr_floor": ("server_lr_schedule", tuple(s for s in SERVER_LR_SCHEDULES if s != "constant")),
    "ema_decay": ("model_average", ("ema",)),
    "average_eta": ("model_average", ("polynomial",)),
}


def parse_params(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``strategy`` of a FedBuff request → its parameters with defaults filled in, and the problems
    (each naming the field and the fix)."""
    problems: list[str] = []
    params: dict[str, Any] = {}
    unknown = sorted(set(raw) - {"name", *CHOICES, *DEFAULTS})
    if unknown:
        problems.append(
            f"strategy.{unknown[0]} is not a fedbuff parameter; use {', '.join([*CHOICES, *DEFAULTS])}"
        )
    for key, (allowed, default_choice) in CHOICES.items():
        chosen = raw.get(key, default_choice)
        if chosen not in allowed:
            fix = CHOICE_HELP.get(key, "")
            problems.append(f"strategy.{key} must be one of {', '.join(allowed)}, got {chosen!r}{fix}")
        params[key] = chosen
    for key, default in DEFAULTS.items():
        value = raw.get(key, default)
        lo, hi, lo_open, hi_open = RANGES[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            problems.append(f"strategy.{key} must be a number, got {value!r}")
            continue
        if key in INTEGERS and value != int(value):
            problems.append(f"strategy.{key} must be a whole number, got {value!r}")
            continue
        if (value <= lo if lo_open else value < lo) or (value >= hi if hi_open else value > hi):
            interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
            problems.append(f"strategy.{key} must be in {interval}, got {value!r}{RANGE_HELP.get(key, '')}")
            continue
        params[key] = int(value) if key in INTEGERS else float(value)
    for key, (choice, using) in NEEDS.items():
        if params.get(choice) in using:
            continue
        params.pop(key, None)
        if key in raw:
            needed = " or ".join(f'"{value}"' for value in using)
            problems.append(f"strategy.{key} needs strategy.{choice} {needed}; set it or remove {key}")
    return params, problems


def staleness_weight(params: Mapping[str, Any], tau: int) -> float:
    """s(τ): polynomial 1/(1+τ)^a (FLSim, the paper), constant 1, or hinge (FedAsync)."""
    kind = params.get("staleness", "polynomial")
    if kind == "constant":
        return 1.0
    if kind == "hinge":
        a, b = float(params.get("hinge_a", 10.0)), int(params.get("hinge_b", 4))
        return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)
    return 1.0 / (1.0 + tau) ** float(params.get("staleness_exponent", 0.5))


def server_lr_at(params: Mapping[str, Any], version: int, versions: int) -> float:
    """The server step size that makes ``version`` + 1 of a job of ``versions`` (its ``rounds``).

    constant: server_lr. With r = version / (versions − 1) (0 at the first step, 1 at the last;
    a job of one version has only its first) and f = ``server_lr_floor``:
    cosine: server_lr × (f + (1 − f) × (1 + cos πr) / 2); linear: server_lr × (1 − (1 − f) × r).
    A job recorded before the field existed is constant."""
    lr = float(params.get("server_lr", 1.0))
    kind = params.get("server_lr_schedule", "constant")
    if kind == "constant" or versions <= 1:
        return lr
    r = min(max(version, 0), versions - 1) / (versions - 1)
    floor = float(params.get("server_lr_floor", 0.5))
    decay = (1.0 + math.cos(math.pi * r)) / 2.0 if kind == "cosine" else 1.0 - r
    return lr * (floor + (1.0 - floor) * decay)


def averages(params: Mapping[str, Any]) -> bool:
    """True when the job returns (and scores) an average of its versions (``model_average`` "ema" or
    "polynomial"; a job recorded before the field existed returns its last version)."""
    return params.get("model_average", "none") != "none"


def average_decay_at(params: Mapping[str, Any], version: int) -> float:
    """The weight d on the average so far when the reduce that makes ``version`` + 1 averages it in:
    x̄_{v+1} = d·x̄_v + (1 − d)·x_{v+1}. "ema": ``ema_decay`` at every version; "polynomial" (η =
    ``average_eta``, t = version + 1 the versions made with this one): d = 1 − (η + 1)/(t + η), 0 at
    the first (x̄_1 = x_1). A function of the version alone, so a retried reduce gets the same."""
    if params.get("model_average", "none") == "polynomial":
        eta, t = float(params.get("average_eta", DEFAULTS["average_eta"])), max(version, 0) + 1
        return 1.0 - (eta + 1.0) / (t + eta)
    return float(params.get("ema_decay", DEFAULTS["ema_decay"]))


def average_uri(model_uri: str) -> str:
    """Where a version's reduce keeps the average beside ``model_uri``, the version's model:
    ``…/reduce/v/model.pt`` → ``…/reduce/v/average/model.pt``."""
    head, _, name = model_uri.rpartition("/")
    return f"{head}/{AVERAGE_DIR}{name}"


def average_section(params: Mapping[str, Any], version: int, model_uri: str) -> dict[str, Any] | None:
    """The reduce inputs' ``average`` for the reduce that makes ``version`` + 1 from ``model_uri``
    (version ``version``'s model): the method, this version's decay (``average_decay_at``), and the
    average so far (None for the first version, whose average is itself). None when the job does not
    average."""
    if not averages(params):
        return None
    previous = average_uri(model_uri) if version > 0 else None
    method = str(params["model_average"])
    return {"method": method, "decay": average_decay_at(params, version), "previous_uri": previous}


def final_model_uri(params: Mapping[str, Any], model_uri: str) -> str:
    """The model the job returns when its last version's reduce made ``model_uri``: the average
    beside it (``model_average`` "ema" or "polynomial"), else the version itself."""
    return average_uri(model_uri) if averages(params) else model_uri


def request_problems(request: Any) -> list[str]:
    """What a FedBuff request cannot have: no starting model (deltas need a base), round policies
    that only a synchronous round has."""
    problems = []
    if not request.model.get("init_uri"):
        problems.append(
            "strategy fedbuff applies each client's delta (its model − the version it trained from), "
            "so version 0 needs a model: give model.init_uri"
        )
    for name in ("participation", "quorum"):
        if getattr(request, name) is not None:
            problems.append(
                f"{name} shapes synchronous rounds; strategy fedbuff has none (buffer_size and "
                f"max_staleness play that part): remove {name}"
            )
    return problems


def cached_calibration(params: Mapping[str, Any]) -> bool:
    """True when the job's server step uses CA2FL's cached update calibration
    (``strategy.calibration: "cached"``; a job recorded before the field existed has none)."""
    return params.get("calibration", "none") == "cached"


def weighs_cache(params: Mapping[str, Any]) -> bool:
    """True when a calibrated step weights each update's whole calibrated estimate by s(τ), h̄
    included (``cache_weight: "staleness"``); False: h̄ at weight 1 (``"full"``, and a job recorded
    before the field existed)."""
    return params.get("cache_weight", "full") == "staleness"
