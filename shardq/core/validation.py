"""What every contract shares: the limits, the problem-collecting checker and ValidationError.

Part of the contracts family (``shardq.core.contracts`` re-exports the public names); the
underscored helpers are the family's internals, used by ``request_fields``, ``request`` and
``messages`` and nowhere else.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import fields
from typing import Any, Literal

SCHEMA_VERSION = 1

KINDS = ("data_parallel", "sweep", "map")
TASK_TYPES = ("train", "reduce")
# ``diverged``: a sweep trial that trained but reported a non-finite metric (``shardq.core.verdicts``).
RESULT_STATUSES = ("succeeded", "failed", "diverged")
DIRECTIONS = ("minimize", "maximize")
TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "CANCELLED")
# ``WAITING``: a pipeline job waiting for the job it follows (``shardq.core.pipeline``).
JOB_STATUSES = ("WAITING", "RUNNING", *TERMINAL_STATUSES)

# Tasks per round of a map job. A round of more than advance.CLOSE_RANGE_SHARDS closes in ranges, so
# no item, payload or manifest grows past a service limit up to here (BENCHMARKS.md section 10).
MAX_SHARDS = 1_000_000
# Tasks per round of a job whose round closes in one invocation that gathers every result: a
# data_parallel round (its reduce averages every shard's model) and a sweep (its ranking needs
# every trial). At ≈ 1.5 ms of a 512 MB Lambda per result that is ≈ 15 s against the
# aggregator's 60 s (BENCHMARKS.md section 10); a bigger round wants a hierarchical reduce.
MAX_GATHERED_TASKS = 10_000
MAX_ROUNDS = 1_000
MAX_PARALLEL = 10_000
DEFAULT_MAX_PARALLEL = 64
MAX_NUM_SAMPLES = 10**13
# A request travels in a Lambda payload and lives in one DynamoDB item (400 KB cap).
MAX_REQUEST_BYTES = 256 * 1024
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
ENTRYPOINT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_ENTRYPOINT = "examples.linear:train"
# Free-form objects (model, hyperparameters, search_space) nest at most this deep: deeper JSON
# would overflow the encoder's recursion limit instead of being rejected with a reason.
MAX_NESTING = 32

Kind = Literal["data_parallel", "sweep", "map"]
TaskType = Literal["train", "reduce"]


class _Value:
    """Equality, hash and repr for the contracts' frozen dataclasses, written once for all of them.

    ``@dataclass`` compiles six methods for every frozen class; for the contracts' eleven that is
    ≈ 6 ms of every Lambda's cold start (BENCHMARKS.md, section 1). With ``eq=False,
    repr=False`` it generates only the three that differ per class (``__init__``,
    ``__setattr__``, ``__delattr__``) and these three stand in for the rest, with the same
    behaviour: equal only to an instance of the same class whose compared fields are equal, a
    hash of the hashed fields, ``Name(field=value, ...)``.
    """

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        names = _field_names(type(self), "compare")
        return tuple(getattr(self, n) for n in names) == tuple(getattr(other, n) for n in names)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, n) for n in _field_names(type(self), "hash")))

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in _field_names(type(self), "repr"))
        return f"{type(self).__qualname__}({shown})"


_FIELD_NAMES: dict[tuple[type, str], tuple[str, ...]] = {}


def _field_names(cls: type, role: str) -> tuple[str, ...]:
    """The fields of a dataclass that take part in its ``compare``, ``hash`` or ``repr``, in order."""
    names = _FIELD_NAMES.get((cls, role))
    if names is None:
        if role == "hash":  # as dataclasses decides: ``hash`` if given, else ``compare``
            names = tuple(f.name for f in fields(cls) if (f.compare if f.hash is None else f.hash))
        else:
            names = tuple(f.name for f in fields(cls) if getattr(f, role))
        _FIELD_NAMES[(cls, role)] = names
    return names


class ValidationError(ValueError):
    """A message failed validation; ``problems`` lists every problem with its fix."""

    def __init__(self, what: str, problems: list[str]) -> None:
        self.what = what
        self.problems = list(problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid {what} ({count} {noun}):\n{lines}")


class _Checker:
    """Collects problems while a dict is read, so one error can name all of them."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, msg: str) -> None:
        self.problems.append(msg)

    def unknown_keys(self, data: dict[str, Any], allowed: tuple[str, ...], prefix: str = "") -> None:
        for key in data:
            if key not in allowed:
                # Imported here: only a rejected request needs it, and it would cost every Lambda's
                # cold start ≈ 0.5 ms (BENCHMARKS.md, section 1).
                import difflib

                hint = difflib.get_close_matches(str(key), allowed, n=1)
                fix = f"did you mean '{prefix}{hint[0]}'?" if hint else f"allowed: {', '.join(allowed)}"
                self.add(f"unknown field '{prefix}{key}': {fix}")

    def choice(self, name: str, value: Any, allowed: Any) -> bool:
        """True when ``value`` is one of ``allowed``; else a problem naming them, and the closest one."""
        if isinstance(value, str | int | float | bool | type(None)) and value in allowed:
            return True
        import difflib  # as in unknown_keys: only a rejected request pays for it

        names = [str(a) for a in allowed]
        hint = difflib.get_close_matches(str(value), names, n=1) if isinstance(value, str) else []
        fix = f"did you mean '{hint[0]}'?" if hint else f"allowed: {', '.join(names)}"
        self.add(f"{name} must be one of {', '.join(names)}, got {value!r:.60}: {fix}")
        return False

    def integer(
        self, data: dict[str, Any], key: str, name: str, lo: int, hi: int, default: int | None = None
    ) -> int | None:
        value = data.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                self.add(f"{name} must be an integer between {lo} and {hi}, got {value!r}")
                return None
        if not lo <= value <= hi:
            self.add(f"{name} must be between {lo} and {hi}, got {value}")
            return None
        return value

    def number(
        self,
        data: dict[str, Any],
        key: str,
        name: str,
        lo: float,
        hi: float,
        default: float,
        *,
        lo_open: bool = False,
        hi_open: bool = False,
    ) -> float:
        """A finite number in ``[lo, hi]`` (ends open where asked); ``default`` when absent or bad."""
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.add(f"{name} must be a number, got {value!r:.60}")
            return default
        if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            self.add(f"{name} must be in {left}{lo:g}, {hi:g}{right}, got {value!r}")
            return default
        return float(value)

    def string(self, data: dict[str, Any], key: str, name: str, required: bool = False) -> str | None:
        value = data.get(key)
        if value is None:
            if required:
                self.add(f"{name} is required: give a non-empty string")
            return None
        if not isinstance(value, str) or not value.strip():
            self.add(f"{name} must be a non-empty string, got {value!r}")
            return None
        return value

    def obj(self, data: dict[str, Any], key: str, name: str) -> dict[str, Any] | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.add(f"{name} must be a JSON object, got {type(value).__name__} {value!r:.60}")
            return None
        return value


def _nesting(value: Any) -> int:
    """How deep lists and objects nest in ``value`` (iterative: safe on hostile depths)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth + 1)
            if deepest > MAX_NESTING:
                return deepest
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _dumps(data: dict[str, Any]) -> str:
    # Sorted keys and no whitespace: identical messages hash identically
    # (content-based deduplication) and stay small.
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def _load_object(raw: str | bytes | dict[str, Any], what: str) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        data = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise ValidationError(what, [f"body is not valid JSON ({exc}); send a JSON object"]) from None
    if not isinstance(data, dict):
        raise ValidationError(what, [f"body must be a JSON object, got {type(data).__name__}"])
    return data


def _identity(data: dict[str, Any], fields: tuple[str, ...]) -> _Checker:
    """Check what every task and result carries: version, job id, round, shard, task type."""
    c = _Checker()
    c.unknown_keys(data, fields)
    if data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        c.add(f"schema_version must be {SCHEMA_VERSION}, got {data.get('schema_version')!r}")
    job_id = c.string(data, "job_id", "job_id", required=True)
    if job_id is not None and not JOB_ID_RE.match(job_id):
        c.add(f"job_id is not a shardq job id: {job_id!r}")
    for key, hi in (("round", MAX_ROUNDS), ("shard_id", MAX_SHARDS)):
        if key not in data:
            c.add(f"{key} is required: an integer between 0 and {hi}")
        else:
            c.integer(data, key, key, 0, hi)
    if data.get("task_type") not in TASK_TYPES:
        c.add(f"task_type must be 'train' or 'reduce', got {data.get('task_type')!r}")
    return c
