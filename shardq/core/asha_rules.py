"""ASHA's promotion rules (``early_stopping.promotion``): how many of a rung's results so far may go on.

``"paper"`` (the default) is the rule of Li et al., "A System for Massively Parallel
Hyperparameter Tuning" (MLSys 2020, Algorithm 2): a trial goes on from rung ``k`` when it ranks in
the top ``n // eta`` of the ``n`` results rung ``k`` has so far. A rung with fewer than ``eta``
results promotes nobody, so the first task at rung ``k + 1`` waits for ``eta`` results of rung
``k``, each behind ``eta`` of rung ``k - 1``: on four workers with eta 3 and three rungs the first
fully trained configuration cannot come before about 1.46 × the time one configuration takes
(``benchmarks.asha_bound``).

``"eager"`` is what Ray Tune's ``ASHAScheduler`` and Optuna's ``SuccessiveHalvingPruner`` do: while
a rung has fewer than ``eta`` results, its best finite result so far goes on too (the top
``max(1, n // eta)``); from ``eta`` results on, the paper's rule. Optuna's
``_is_trial_promotable_to_next_rung`` sets ``promotable_idx = 0`` when ``n // eta - 1 == -1``
("for the first ``eta - 1`` trials, this implementation instead promotes the trial if its value
is the smallest one among the competing values", the trial's own value among them); Ray Tune's
``_Bracket.on_result`` lets a trial continue unless it is below the ``1 - 1/eta`` percentile of
the rung's earlier values, so the first trial at each milestone always continues. So the sweep's
first trial runs to the full budget at once and the first fully trained configuration comes after
about one configuration's time; the price is trial-epochs spent on trials the paper's rule would
have stopped (an early best may later rank below the top ``1/eta``): ``rung_bound`` below.

Both rules are decided the same way (``shardq.core.async_sweep``): when a slot is free, over the
results the pass read, once per ``(rung, trial)`` under the job's conditional decision log; a
non-finite (diverged) or failed result is never a candidate, whatever the rule. "So far" is the
pass's view: a trial that was the best of its rung when it reported but was overtaken before a
slot freed is not promoted by ``"eager"`` (Optuna decides in the reporting trial's own thread, so
there it would have gone on; here a trial waits as a decision item at no cost, and the better
trial takes the slot).
"""

from __future__ import annotations

from shardq.core.request_fields import PROMOTION_RULES, EarlyStopping

# ``SweepDecision.rule`` of a promotion only the eager rule makes (its rung had fewer than eta results).
EAGER = "eager"


def promotable(es: EarlyStopping, known: int) -> int:
    """How many of a rung's ``known`` results so far rank high enough to go on (best first)."""
    top = known // es.eta
    if es.promotion == EAGER and known > 0:
        return max(1, top)
    return top


def rule_of(es: EarlyStopping, known: int) -> str:
    """The ``rule`` a promotion over ``known`` results records: ``"eager"`` where the paper's rule
    would promote nobody yet, else ``"asha"``."""
    return EAGER if known // es.eta == 0 else "asha"


def rung_bound(es: EarlyStopping, entered: int) -> int:
    """The most of ``entered`` trials of a rung that can go on (``async_bounds.rung_bounds``).

    Paper: ``max(1, n - eta + 1)`` (with results arriving worst to best, every result from the
    ``eta``-th on is a new best). Eager: all ``n`` (every result before the ``eta``-th may be a new
    best as well)."""
    if not entered:
        return 0
    return entered if es.promotion == EAGER else max(1, entered - es.eta + 1)


def problems(raw: dict[str, object], method: str) -> list[str]:
    """What is wrong with ``early_stopping.promotion`` in a request's ``early_stopping`` object."""
    if "promotion" not in raw:
        return []
    value = raw["promotion"]
    if method != "asha":
        return [
            f'early_stopping.promotion applies to method "asha" only; remove it or set method "asha" '
            f"(got method {method!r:.40})"
        ]
    if not isinstance(value, str) or value not in PROMOTION_RULES:
        return [
            f"early_stopping.promotion must be one of {', '.join(PROMOTION_RULES)}, got {value!r:.60}: "
            '"paper" promotes the top 1/eta of a rung\'s results so far (the default), "eager" also '
            "its best while it has fewer than eta (as Optuna and Ray Tune)"
        ]
    return []


__all__ = ["EAGER", "problems", "promotable", "rule_of", "rung_bound"]
