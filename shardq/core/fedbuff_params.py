"""FedBuff's request parameters: names, defaults, ranges and the staleness weight s(τ).

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
# The request's string parameters and their defaults (the numeric ones are DEFAULTS below).
CHOICES: dict[str, tuple[tuple[str, ...], str]] = {
    "staleness": (STALENESS_FUNCTIONS, "polynomial"),
    "calibration": (CALIBRATIONS, "none"),
    "cache_weight": (CACHE_WEIGHTS, "staleness"),
}
# What a choice means, appended to the problem when a request names another.
CHOICE_HELP = {
    "calibration": ' ("cached": CA2FL\'s cached update calibration for non-IID clients; "none": FedBuff)',
    "cache_weight": (
        ' (with calibration "cached": "staleness" weights the clients\' cached mean like the buffer\'s '
        'updates, by s(τ), stable when updates are stale; "full": the cached mean at weight 1)'
    ),
}
# Numeric parameters and their defaults. FLSim's FedBuff: polynomial staleness weight with exponent
# 0.5 (``PolynomialStalenessWeightConfig.exponent``; the paper's s(τ) = 1/(1+τ)^0.5), a plain
# server step (FedAvg's, rate 1). Hinge: FedAsync's s(τ) = 1 for τ ≤ b, 1/(a(τ − b) + 1) after,
# with the paper's a = 10, b = 4. ``buffer_size`` 10 is the paper's K.
DEFAULTS: dict[str, float] = {
    "buffer_size": 10,
    "staleness_exponent": 0.5,
    "max_staleness": 100,
    "server_lr": 1.0,
    "hinge_a": 10.0,
    "hinge_b": 4,
}
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "buffer_size": (1, 100_000, False, False),
    "staleness_exponent": (0.0, 1.0, False, False),
    "max_staleness": (0, 1_000_000, False, False),
    "server_lr": (0.0, 1e3, True, False),
    "hinge_a": (0.0, 1e6, False, False),
    "hinge_b": (0, 1_000_000, False, False),
}
INTEGERS = ("buffer_size", "max_staleness", "hinge_b")


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
            problems.append(f"strategy.{key} must be in {interval}, got {value!r}")
            continue
        params[key] = int(value) if key in INTEGERS else float(value)
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
