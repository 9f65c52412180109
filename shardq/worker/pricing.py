"""What an hour of this worker costs: the price its results carry (``ShardResult.price_per_hour``).

In order: ``shardq worker --price-per-hour`` (always wins: Savings Plans, other regions, other
clouds, a lab's internal rate); else, on EC2, the instance type and purchase option read from the
instance metadata (IMDSv2, ``instance-type`` and ``instance-life-cycle``) looked up in
``shardq/core/instance_prices.json``; else 0, and the worker says it is unpriced (a laptop, or
an instance type the file does not list). The aggregator turns each result's seconds and price
into its cost once (``shardq.core.spend``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from shardq.core.messages import MAX_PRICE_PER_HOUR
from shardq.worker.stop import SpotNotice, StopSignal

log = logging.getLogger("shardq.worker")

PRICES_FILE = Path(__file__).resolve().parents[1] / "core" / "instance_prices.json"
INSTANCE_TYPE = "/latest/meta-data/instance-type"
LIFE_CYCLE = "/latest/meta-data/instance-life-cycle"


@dataclass(frozen=True)
class Price:
    """A worker's price per hour (0: unpriced) and where it came from, for its start-up log."""

    per_hour: float
    source: str

    @property
    def priced(self) -> bool:
        """True when results carry a cost."""
        return self.per_hour > 0


@cache
def price_file() -> dict[str, Any]:
    """The instance price file (read once)."""
    data: dict[str, Any] = json.loads(PRICES_FILE.read_text())
    return data


def check_flag(value: float) -> float:
    """``--price-per-hour``: a finite number of USD from 0 to ``MAX_PRICE_PER_HOUR``."""
    if not math.isfinite(value) or not 0 <= value <= MAX_PRICE_PER_HOUR:
        raise ValueError(
            f"--price-per-hour must be a number of USD per hour from 0 to {MAX_PRICE_PER_HOUR}, got {value}"
        )
    return value


def spot_reference(entry: dict[str, Any]) -> str:
    """The price file's Spot reference for an entry, for a Spot worker's log line ('' without one).

    A snapshot of the catalog's Spot prices, never the price a Spot worker records: Spot changes
    by zone and by the hour, and a figure below what the instance is billed would let the spend
    guard stop late. On-demand is the upper bound a Spot instance with the default maximum price
    is never billed above, so that stays the recorded price; the range says how far above the
    Spot price it probably is, and what to export as ``SHARDQ_PRICE_PER_HOUR``.
    """
    ref = entry.get("spot_reference")
    if not ref:
        return ""
    return (
        f" (the catalog's Spot reference: ${ref['min']:g} to ${ref['max']:g}/h across "
        f"{len(ref['zones'])} zones, a snapshot)"
    )


def lookup(instance_type: str, life_cycle: str) -> Price:
    """The price file's figure for ``instance_type`` bought as ``life_cycle`` (``spot`` or
    ``on-demand``); unpriced when the file does not list the type."""
    book = price_file()
    entry = book["instances"].get(instance_type)
    if entry is None:
        return Price(0.0, f"{instance_type} is not in {PRICES_FILE.name}: unpriced; pass --price-per-hour")
    where = f"{book['region']} list price checked {entry['checked']}" + (
        "" if entry.get("confirmed") else ", not confirmed from a linkable source"
    )
    if life_cycle == "spot":
        if "spot" in entry:
            return Price(float(entry["spot"]), f"{instance_type} Spot, {where}")
        return Price(
            float(entry["on_demand"]),
            f"{instance_type} Spot, priced at on-demand ({where}) as an upper bound{spot_reference(entry)}; "
            "set SHARDQ_PRICE_PER_HOUR or --price-per-hour to your Spot price",
        )
    return Price(float(entry["on_demand"]), f"{instance_type} on-demand, {where}")


def resolve(flag: float | None, imds: str | None) -> Price:
    """The worker's price: the flag, else the instance metadata at ``imds`` and the price file,
    else unpriced. ``imds`` None: do not ask (``--spot-notice off`` or not on EC2)."""
    if flag is not None:
        return Price(check_flag(flag), "--price-per-hour")
    if imds is None:
        return Price(0.0, "unpriced: no --price-per-hour and no instance metadata")
    meta = SpotNotice(StopSignal(), endpoint=imds, mode="off")
    try:
        instance_type = meta.metadata(INSTANCE_TYPE)
        life_cycle = meta.metadata(LIFE_CYCLE) or "on-demand"
    except OSError as exc:
        return Price(0.0, f"unpriced: no instance metadata at {imds} ({exc}); pass --price-per-hour")
    if not instance_type:
        return Price(0.0, "unpriced: the instance metadata names no instance type")
    return lookup(instance_type.strip(), life_cycle.strip())
