"""Money as shardq counts it: a request's ``budget_usd`` and the micro-USD integers the job table keeps.

Standard library and the validation helpers only: the request parser imports it (and so every
Lambda); the spend guard that acts on a budget is ``shardq.core.spend``.

Costs are integers of micro-USD (millionths of a dollar) from ``ShardResult.cost_micro_usd``:
DynamoDB's ``ADD`` sums them exactly, so a job's cost equals the sum of its counted results'
costs to the last digit, however many results there are.

The read views (``status``, ``watch``, ``result``, the dashboard) word a cost one way, with
``cost_text``: ``$0.06`` of what its counted outcomes cost, ``of budget_usd 5.00`` with a budget,
``budget spent: new tasks stopped at …`` once the spend guard stopped it, ``unpriced`` for a job
with a budget whose outcomes came without a price (workers without ``--price-per-hour``, off EC2),
so a zero is never mistaken for a free job. A job without a budget whose outcomes all came
unpriced shows no cost line at all (``--json`` still has ``cost_usd: 0``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from shardq.core.validation import _Checker

# The largest budget a request may name (USD): a typo guard, not a policy.
MAX_BUDGET_USD = 10_000_000.0
MICRO = 1_000_000


def budget_field(c: _Checker, data: dict[str, Any]) -> float | None:
    """``budget_usd``: a positive number of USD, or absent/null for no limit (a problem on ``c``)."""
    value = data.get("budget_usd")
    if value is None:
        return None
    bad = isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value)
    if bad or not 0 < value <= MAX_BUDGET_USD:
        c.add(
            f"budget_usd must be a positive number of USD no greater than {MAX_BUDGET_USD:,.0f} "
            f"(e.g. 25 or 12.5); got {value!r:.60}; "
            "set one in that range, or leave budget_usd out for no limit"
        )
        return None
    return float(value)


def schema() -> dict[str, Any]:
    """``budget_usd`` in the request's JSON Schema (``shardq.core.schema``)."""
    return {
        "type": ["number", "null"],
        "exclusiveMinimum": 0,
        "maximum": MAX_BUDGET_USD,
        "description": "USD the job may spend on workers' time (each result's seconds at its worker's "
        "price): once its counted cost reaches it, no new task is sent, queued ones are dropped, running "
        "ones finish, and the job ends FAILED saying so. Absent or null: no limit.",
    }


def to_micro(usd: float) -> int:
    """USD → micro-USD (rounded)."""
    return round(usd * MICRO)


def usd(micro: int) -> float:
    """Micro-USD → USD."""
    return micro / MICRO


def money(micro: int) -> str:
    """``$5.12`` (or ``$0.0031`` below a cent, so a small job's cost is not shown as nothing)."""
    value = usd(micro)
    if value and abs(value) < 0.01:
        return f"${value:.4f}"
    return f"${value:,.2f}"


def budget_text(budget: float) -> str:
    """A budget as the request gave it: ``5.00``, ``12.50``, ``0.015``."""
    return f"{budget:,.2f}" if round(budget, 2) == budget else f"{budget:g}"


def trial_costs(results: Iterable[Any], copies: Mapping[int, int] | None = None) -> dict[int, float]:
    """USD per trial (shard id) over the counted ``ShardResult``s given, every rung included, and
    ``copies``: the micro-USD its backup copies' losing runs cost (``JobStore.copy_costs``), so the
    trials' costs add up to the job's; trials that cost nothing (unpriced workers) are left out."""
    micro: dict[int, int] = {t: m for t, m in (copies or {}).items() if m}
    for r in results:
        if r.task_type == "train" and r.cost_micro_usd:
            micro[r.shard_id] = micro.get(r.shard_id, 0) + r.cost_micro_usd
    return {trial: usd(m) for trial, m in micro.items()}


# -- how the read views say it (status, watch, result, the dashboard) -----------------------------


def cost_text(cost_usd: float, budget_usd: float | None = None, stopped_at: str | None = None) -> str:
    """``$0.06 of budget_usd 5.00``, ``$0.06 · budget spent: new tasks stopped at …``, ``unpriced``."""
    spent = money(to_micro(cost_usd)) if cost_usd else "unpriced ($0 recorded)"
    if budget_usd is not None:
        spent += f" of budget_usd {budget_text(budget_usd)}"
    if stopped_at:
        spent += f" · budget spent: new tasks stopped at {stopped_at}"
    return spent


def cost_of(data: dict[str, Any]) -> str | None:
    """``cost_text`` of a ``status --json`` / ``JobView`` dict; None (the line left out) for a job
    without a budget whose outcomes all came unpriced."""
    if not data.get("cost_usd") and data.get("budget_usd") is None:
        return None
    return cost_text(
        float(data.get("cost_usd") or 0.0), data.get("budget_usd"), data.get("budget_stopped_at")
    )


def manifest_cost(manifest: dict[str, Any]) -> str | None:
    """``cost_text`` of a manifest's ``cost`` section (None in a manifest written before it existed)."""
    cost = manifest.get("cost")
    if not isinstance(cost, dict) or (not cost.get("cost_usd") and cost.get("budget_usd") is None):
        return None
    return cost_text(
        float(cost.get("cost_usd") or 0.0), cost.get("budget_usd"), cost.get("budget_stopped_at")
    )
