"""The worker fleet's scaling rule, evaluated from its one definition (``fleet_scaling.json``).

The fleet scales on *runnable* work, not on the raw queue depth. A job's tasks travel in
``max_parallel`` FIFO lanes (message groups) and a lane hands out one task at a time, so tasks
queued behind a busy lane cannot run however many workers start. In CloudWatch metric math::

    backlog   = visible + in-flight tasks on the task queue
    workers   = max(running, desired) worker tasks
    runnable  = min(backlog, lanes × target)     lanes: RunnableLanes, published every minute
    perworker = runnable / workers               (runnable itself when workers = 0)

Target tracking holds ``perworker`` at ``target`` (``fleet_backlog_per_worker``), which settles on
``min(ceil(backlog / target), lanes)`` workers, bounded by ``fleet_max_workers``. A step policy wakes
a fleet at zero straight to that size (target tracking cannot multiply zero); another returns it to
zero once the queue has been empty for a while. The lanes gauge is, over RUNNING jobs, the sum of
``min(max_parallel, tasks of the job's current phase)`` (:func:`job_lanes`); while it has no data,
``max_workers`` stands in and the rule is the plain backlog rule.

The expressions live in ``fleet_scaling.json`` so that one text serves both sides of the layering
rule: the stack (which imports no runtime module) renders it into the scaling policy, alarm and
dashboard; this module evaluates it for ``shardq estimate`` and the tests. :func:`evaluate`
implements the part of the metric-math language the rule uses.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Protocol

RULE_FILE = Path(__file__).with_name("fleet_scaling.json")
_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<name>[A-Za-z_]\w*)|(?P<op><=|>=|==|!=|[-+*/<>(),\[\]]))"
)


@cache
def rule() -> dict[str, Any]:
    """The rule as stored: the lanes metric, ``inputs`` and ``constants`` (with docs), ``expressions``."""
    data: dict[str, Any] = json.loads(RULE_FILE.read_text(encoding="utf-8"))
    return data


def lanes_metric() -> tuple[str, str, str]:
    """``(namespace, metric name, dimension name)`` of the RunnableLanes gauge; the dimension's value
    is the job table's name, so stacks sharing an account and region never mix their gauges."""
    m = rule()["lanes_metric"]
    return m["namespace"], m["metric_name"], m["dimension"]


class MetricMathError(ValueError):
    """An expression outside the metric-math subset :func:`evaluate` implements."""


def evaluate(expression: str, values: Mapping[str, float | None]) -> float | None:
    """Evaluate one metric-math expression for one datapoint.

    Parameters
    ----------
    expression
        Metric math built from numbers, names, ``+ - * /``, comparisons, ``FILL(m, v)``,
        ``MIN([...])``, ``MAX([...])`` and ``IF(c, a, b)``.
    values
        Each name's value; ``None`` is a missing datapoint (what ``FILL`` replaces).

    Returns
    -------
    float or None
        ``None`` when a missing datapoint reaches the result unfilled.

    Raises
    ------
    MetricMathError
        On syntax outside that subset, or a name without a value.
    """
    tokens = [m.group(m.lastgroup or "") for m in _TOKEN.finditer(expression)]
    if "".join(tokens) != re.sub(r"\s+", "", expression):
        raise MetricMathError(f"cannot tokenize {expression!r}")
    parser = _Parser(tokens, values)
    result = parser.comparison()
    if parser.pos != len(tokens):
        raise MetricMathError(f"unexpected {tokens[parser.pos]!r} in {expression!r}")
    return result


class _Parser:
    """Recursive descent over comparison > sum > product > atom; IF evaluates one branch only."""

    def __init__(self, tokens: list[str], values: Mapping[str, float | None]) -> None:
        self.tokens, self.values, self.pos = tokens, values, 0

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self, expected: str | None = None) -> str:
        token = self._peek()
        if token is None or (expected is not None and token != expected):
            raise MetricMathError(f"expected {expected or 'more'} at token {self.pos}, got {token!r}")
        self.pos += 1
        return token

    def comparison(self) -> float | None:
        left = self.sum()
        ops: dict[str, Callable[[float, float], bool]] = {
            "<": float.__lt__, ">": float.__gt__, "<=": float.__le__, ">=": float.__ge__,
            "==": float.__eq__, "!=": float.__ne__,
        }  # fmt: skip
        while self._peek() in ops:
            op = ops[self._take()]
            right = self.sum()
            left = None if left is None or right is None else float(op(float(left), float(right)))
        return left

    def sum(self) -> float | None:
        left = self.product()
        while self._peek() in ("+", "-"):
            sign = 1.0 if self._take() == "+" else -1.0
            right = self.product()
            left = None if left is None or right is None else left + sign * right
        return left

    def product(self) -> float | None:
        left = self.atom()
        while self._peek() in ("*", "/"):
            op = self._take()
            right = self.atom()
            if left is None or right is None:
                left = None
            elif op == "*":
                left = left * right
            else:  # CloudWatch: x / 0 is no datapoint; the rule guards its divisions with IF
                left = None if right == 0 else left / right
        return left

    def atom(self) -> float | None:
        part = self._take()
        if part == "(":
            value = self.comparison()
            self._take(")")
            return value
        if part == "-":
            value = self.atom()
            return None if value is None else -value
        if part[0].isdigit():
            return float(part)
        if self._peek() == "(":
            return self._call(part)
        if part not in self.values:
            raise MetricMathError(f"no value for {part!r}")
        value = self.values[part]
        return None if value is None else float(value)

    def _call(self, name: str) -> float | None:
        if name not in ("MIN", "MAX", "FILL", "IF"):
            raise MetricMathError(f"function {name} is not in the subset shardq uses")
        self._take("(")
        if name in ("MIN", "MAX"):
            self._take("[")
            items = [self.comparison()]
            while self._peek() == ",":
                self._take(",")
                items.append(self.comparison())
            self._take("]")
            self._take(")")
            present = [i for i in items if i is not None]
            return (min if name == "MIN" else max)(present) if present else None
        first = self.comparison()
        self._take(",")
        if name == "FILL":
            fill = self.comparison()
            self._take(")")
            return fill if first is None else first
        return self._if(first)  # IF

    def _if(self, condition: float | None) -> float | None:
        # Both branches are parsed; only the chosen one is kept (a skipped x / 0 must not count).
        then = self.comparison()
        self._take(",")
        otherwise = self.comparison()
        self._take(")")
        if condition is None:
            return None
        return then if condition else otherwise


def fleet_values(
    visible: float | None,
    in_flight: float | None,
    workers: float,
    *,
    target: float,
    max_workers: int,
    lanes: float | None = None,
) -> dict[str, float | None]:
    """Every expression of the rule for one datapoint (``running = desired = workers``)."""
    values: dict[str, float | None] = {
        "visible": visible,
        "inflight": in_flight,
        "running": workers,
        "desired": workers,
        "lanes": lanes,
        "target": target,
        "max_workers": max_workers,
    }
    for name, expression in rule()["expressions"].items():
        values[name] = evaluate(expression, values)
    return values


def backlog_per_worker(
    visible: float, in_flight: float, workers: float, *, lanes: float | None = None
) -> float:
    """The target-tracking metric (``perworker``) with a target of 1 and no worker cap."""
    values = fleet_values(
        max(0.0, visible), max(0.0, in_flight), workers, target=1.0, max_workers=10**9, lanes=lanes
    )
    return float(values["perworker"] or 0.0)


def desired_workers(
    visible: float, in_flight: float, *, target: float, max_workers: int, lanes: float | None = None
) -> int:
    """Workers the fleet settles on: ``min(max_workers, lanes, ceil(backlog / target))``.

    Parameters
    ----------
    visible, in_flight
        The task queue's depth (negative readings count as 0).
    target
        ``fleet_backlog_per_worker``.
    max_workers
        ``fleet_max_workers``.
    lanes
        The RunnableLanes gauge; ``None`` (no datapoint) caps at ``max_workers`` only.

    Raises
    ------
    ValueError
        When ``target`` is not positive or ``max_workers`` is negative.
    """
    if target <= 0:
        raise ValueError(f"target={target}: the backlog per worker target must be positive")
    if max_workers < 0:
        raise ValueError(f"max_workers={max_workers}: must be 0 or more")
    # Settled: the workers running equal the answer, so perworker × workers / target is the size.
    values = fleet_values(
        max(0.0, visible), max(0.0, in_flight), 0, target=target, max_workers=max_workers, lanes=lanes
    )
    runnable = float(values["wake"] or 0.0)  # at zero workers, wake = runnable
    # Round away float noise (e.g. 0.3 / 0.1) before the ceiling.
    return max(0, min(max_workers, math.ceil(round(runnable / target, 9))))


def next_desired(
    current: int,
    visible: float,
    in_flight: float,
    *,
    target: float,
    max_workers: int,
    lanes: float | None = None,
) -> int:
    """One scaling step from ``current`` workers, as Application Auto Scaling takes it.

    From zero the wake-up step policy answers (:func:`desired_workers`); otherwise target tracking's
    proportional rule ``ceil(current × perworker / target)``.
    """
    if current <= 0:
        return desired_workers(visible, in_flight, target=target, max_workers=max_workers, lanes=lanes)
    values = fleet_values(
        max(0.0, visible), max(0.0, in_flight), current, target=target, max_workers=max_workers, lanes=lanes
    )
    metric = float(values["perworker"] or 0.0)
    return max(0, min(max_workers, math.ceil(round(current * metric / target, 9))))


class RunningJob(Protocol):
    """What :func:`job_lanes` reads of a job record (``shardq.core.jobstore.JobRecord``)."""

    @property
    def round(self) -> int: ...

    @property
    def phase(self) -> str: ...

    def expected(self, round_no: int, phase: str) -> int: ...


def job_lanes(job: RunningJob, max_parallel: int) -> int:
    """Lanes a RUNNING job can keep busy now: ``min(max_parallel, tasks of its current phase)``.

    An upper bound on purpose: a job's lane count never drops to 0 while it runs (a retried shard
    must still find a worker), and the backlog caps the rest.
    """
    return max(1, min(max_parallel, job.expected(job.round, job.phase)))


def runnable_lanes(jobs: Iterable[tuple[RunningJob, int]]) -> int:
    """The RunnableLanes gauge: :func:`job_lanes` summed over ``(job, max_parallel)`` of RUNNING jobs."""
    return sum(job_lanes(job, max_parallel) for job, max_parallel in jobs)
