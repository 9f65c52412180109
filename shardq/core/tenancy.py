"""Tenants and scheduling: who a job belongs to, and how one fleet is shared between teams.

Standard library only: the stack reads this module by path (``stacks/tenancy_config.py``) to
validate ``cdk.json`` at synth, exactly as the Lambdas parse it at run time (one definition).

Configuration
-------------
The ``scheduling`` context key of ``cdk.json`` (the stack hands it to the Lambdas as the JSON
environment variable ``SHARDQ_SCHEDULING``; absent = the defaults below, one open tenant space)::

    "scheduling": {
      "window_per_lane": 2,            # tasks a job keeps queued or running per lane (1..100;
                                       # null: send each round whole, as before windows)
      "priority_aging_seconds": 60,    # a running job's priority rises 100 per this many s (1..86400)
      "default_tenant": "default",     # tenant of a request that names none (null: tenant required)
      "tenants": {                     # {} or absent: any tenant name, weight 1, no quotas
        "default": {"weight": 1},
        "vision": {
          "weight": 2,                 # share of a saturated fleet, relative (0 < weight <= 1000)
          "principals": ["arn:aws:iam::123456789012:role/vision-ci"],   # may submit as "vision"
          "quotas": {"running_jobs": 10, "queued_shards": 1000000, "running_tasks": 64},
          "monthly_budget_usd": 5000   # helper F's spend guard (shardq.core.admission)
        }
      }
    }

* ``weight``: when several tenants have running jobs, each job's window (tasks it may have sent
  but not yet counted) is scaled by its tenant's weight over the largest active weight, and
  split between the tenant's running jobs; the queue then serves tenants in that ratio
  (``shardq.core.admission``).
* ``quotas`` (each optional, a positive integer): ``running_jobs`` and ``queued_shards`` are
  checked at submit (a submit over one is refused, nothing created); ``running_tasks`` caps the
  sum of the tenant's windows, so the tasks it has queued or running never exceed it. It must be
  at least ``running_jobs`` (each running job keeps one task going).
* ``principals``: IAM principal ARNs allowed to submit as this tenant on AWS (the stack grants
  them the splitter alias named after the tenant; the splitter takes the tenant from the alias it
  was invoked through, so one team cannot claim another's name).
* ``monthly_budget_usd``: a positive number or null (the spend guard's, helper F).

Requests carry ``tenant`` (a name as ``TENANT_RE``) and ``priority`` (``MIN_PRIORITY`` ..
``MAX_PRIORITY``, higher first, default ``DEFAULT_PRIORITY``; AWS Batch's 0–1000 range).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
TENANT_HINT = "lowercase letters, digits and '-', 1-63 characters, starting with a letter or digit"
MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = 0, 1000, 500
DEFAULT_TENANT = "default"
DEFAULT_WINDOW_PER_LANE = 2
MAX_WINDOW_PER_LANE = 100
DEFAULT_AGING_S = 60.0
MAX_AGING_S = 86400.0
MAX_WEIGHT = 1000.0
# Priority points a job gains per ``priority_aging_seconds`` of running (aging: never starved).
AGING_STEP = 100
QUOTA_NAMES = ("running_jobs", "queued_shards", "running_tasks")
ENV = "SHARDQ_SCHEDULING"
# The splitter alias a tenant's principals invoke: ``tenant-<name>`` (stacks/components/tenant_access.py).
ALIAS_PREFIX = "tenant-"
CONTEXT_KEY = "scheduling"
_TOP = ("window_per_lane", "priority_aging_seconds", "default_tenant", "tenants")
_TENANT_KEYS = ("weight", "principals", "quotas", "monthly_budget_usd")


class SchedulingConfigError(ValueError):
    """The scheduling configuration is invalid; ``problems`` names each, with its fix."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source} is invalid: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Quotas:
    """A tenant's limits (None: unlimited)."""

    running_jobs: int | None = None
    queued_shards: int | None = None
    running_tasks: int | None = None


@dataclass(frozen=True)
class Tenant:
    """One team sharing the fleet."""

    name: str
    weight: float = 1.0
    principals: tuple[str, ...] = ()
    quotas: Quotas = field(default_factory=Quotas)
    monthly_budget_usd: float | None = None


@dataclass(frozen=True)
class Scheduling:
    """The parsed ``scheduling`` configuration (``parse``); the defaults are an open tenant space."""

    # None: no windows, every round goes on the queue whole (no SHARDQ_SCHEDULING: a stack
    # deployed before windows; the parser defaults to DEFAULT_WINDOW_PER_LANE).
    window_per_lane: int | None = None
    priority_aging_seconds: float = DEFAULT_AGING_S
    default_tenant: str | None = DEFAULT_TENANT
    tenants: Mapping[str, Tenant] = field(default_factory=dict)

    @property
    def closed(self) -> bool:
        """True when tenants are configured: a request must name one of them."""
        return bool(self.tenants)

    def tenant(self, name: str) -> Tenant:
        """The tenant called ``name`` (in an open space, any valid name: weight 1, no quotas)."""
        if name in self.tenants:
            return self.tenants[name]
        return Tenant(name=name)

    def resolve(
        self, requested: str | None, *, invoked_as: str | None = None
    ) -> tuple[str | None, list[str]]:
        """The tenant a request runs as, or the problems (naming field ``tenant`` and the fix).

        ``invoked_as``: the tenant the caller is (the splitter alias it invoked on AWS); a
        request naming another tenant is refused. Locally (None) the request's own name counts.
        """
        problems: list[str] = []
        if requested is not None and invoked_as is not None and requested != invoked_as:
            return None, [
                f"tenant '{requested}' is not yours: this caller submits as tenant '{invoked_as}' "
                "(omit tenant, or invoke the splitter alias of your own tenant)"
            ]
        name = requested if requested is not None else (invoked_as or self.default_tenant)
        if name is None:
            known = ", ".join(sorted(self.tenants))
            return None, [f"tenant is required: name one of {known} (cdk.json scheduling.tenants)"]
        if self.closed and name not in self.tenants:
            known = ", ".join(sorted(self.tenants))
            problems.append(
                f"tenant '{name}' is unknown: use one of {known}, or ask the platform team to add it "
                "to cdk.json scheduling.tenants"
            )
        return (None, problems) if problems else (name, [])

    def effective_priority(self, priority: int, running_s: float) -> float:
        """``priority`` aged by how long the job has run: +``AGING_STEP`` per
        ``priority_aging_seconds``, capped at ``MAX_PRIORITY``."""
        aged = priority + AGING_STEP * max(0.0, running_s) / self.priority_aging_seconds
        return min(float(MAX_PRIORITY), aged)

    def to_json(self, *, principals: bool = True) -> str:
        """The configuration as JSON; ``SHARDQ_SCHEDULING`` holds it without ``principals`` (the
        Lambdas take a tenant from the alias invoked, and an environment holds 4 KB at most)."""
        return json.dumps(
            {
                "window_per_lane": self.window_per_lane,
                "priority_aging_seconds": self.priority_aging_seconds,
                "default_tenant": self.default_tenant,
                "tenants": {
                    t.name: {
                        "weight": t.weight,
                        "principals": list(t.principals) if principals else [],
                        "quotas": {
                            k: getattr(t.quotas, k) for k in QUOTA_NAMES if getattr(t.quotas, k) is not None
                        },
                        "monthly_budget_usd": t.monthly_budget_usd,
                    }
                    for t in self.tenants.values()
                },
            },
            sort_keys=True,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Scheduling:
        """The configuration in ``env[ENV]`` (the defaults when unset or empty)."""
        raw = env.get(ENV) or ""
        if not raw.strip():
            return cls()
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise SchedulingConfigError(
                ENV, [f"not JSON ({exc}); the stack writes it from cdk.json"]
            ) from exc
        return parse(data, source=ENV)


def invoked_tenant(invoked_function_arn: str | None) -> str | None:
    """The tenant whose alias a Lambda was invoked through (``context.invoked_function_arn``
    ends ``:tenant-<name>``), or None (the unqualified function, a version, another alias)."""
    if not invoked_function_arn:
        return None
    parts = invoked_function_arn.split(":")
    if len(parts) < 8 or not parts[7].startswith(ALIAS_PREFIX):
        return None
    return parts[7][len(ALIAS_PREFIX) :] or None


def check_tenant_name(value: Any) -> str | None:
    """Why ``value`` is not a tenant name (None when it is one)."""
    if not isinstance(value, str) or not TENANT_RE.match(value):
        return f"tenant must be {TENANT_HINT}; got {value!r:.60}"
    return None


def check_priority(value: Any) -> str | None:
    """Why ``value`` is not a priority (None when it is one)."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_PRIORITY <= value <= MAX_PRIORITY:
        return (
            f"priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY} (higher runs first, "
            f"default {DEFAULT_PRIORITY}); got {value!r:.60}"
        )
    return None


def request_schema() -> dict[str, Any]:
    """The JSON Schema of a request's ``tenant`` and ``priority`` (shardq.core.schema)."""
    return {
        "tenant": {
            "type": "string",
            "pattern": TENANT_RE.pattern,
            "description": "Who runs the job (cdk.json scheduling.tenants); default: the default tenant. "
            "On AWS the splitter alias invoked decides it.",
        },
        "priority": {
            "type": "integer",
            "minimum": MIN_PRIORITY,
            "maximum": MAX_PRIORITY,
            "default": DEFAULT_PRIORITY,
            "description": "Higher runs first when the fleet is saturated; a running job ages up "
            f"{AGING_STEP} points per priority_aging_seconds, so none starves.",
        },
    }


def tenancy_fields(c: Any, data: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """A request's ``tenant`` and ``priority`` (None when absent); problems go to ``c.add``
    (the request's ``_Checker``). Whether the tenant exists is the submit's question
    (``Scheduling.resolve``): the request is parsed the same way everywhere."""
    tenant, priority = data.get("tenant"), data.get("priority")
    if tenant is not None and (bad := check_tenant_name(tenant)) is not None:
        c.add(bad)
        tenant = None
    if priority is not None and (bad := check_priority(priority)) is not None:
        c.add(bad)
        priority = None
    return tenant, priority


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _tenant(name: str, raw: Any, where: str, problems: list[str]) -> Tenant | None:
    if (bad := check_tenant_name(name)) is not None:
        problems.append(f"{where}: {bad}")
        return None
    if not isinstance(raw, dict):
        problems.append(f'{where} must be an object such as {{"weight": 1}}')
        return None
    problems.extend(
        f"{where}.{k} is not a setting (use {', '.join(_TENANT_KEYS)})" for k in raw if k not in _TENANT_KEYS
    )
    weight = raw.get("weight", 1)
    if not _number(weight) or not 0 < weight <= MAX_WEIGHT:
        problems.append(
            f"{where}.weight must be a number above 0 and at most {MAX_WEIGHT:g}; got {weight!r:.40}"
        )
        weight = 1
    principals = raw.get("principals", [])
    if not isinstance(principals, list) or not all(
        isinstance(p, str) and p.startswith("arn:") for p in principals
    ):
        problems.append(f'{where}.principals must be a list of IAM principal ARNs ("arn:aws:iam::...")')
        principals = []
    quotas_raw = raw.get("quotas", {})
    values: dict[str, int | None] = dict.fromkeys(QUOTA_NAMES)
    if not isinstance(quotas_raw, dict):
        problems.append(f"{where}.quotas must be an object with {', '.join(QUOTA_NAMES)}")
    else:
        for key, value in quotas_raw.items():
            if key not in QUOTA_NAMES:
                problems.append(f"{where}.quotas.{key} is not a quota (use {', '.join(QUOTA_NAMES)})")
            elif value is not None and not _positive_int(value):
                problems.append(f"{where}.quotas.{key} must be a positive integer or null; got {value!r:.40}")
            else:
                values[key] = value
    jobs, tasks = values["running_jobs"], values["running_tasks"]
    if jobs is not None and tasks is not None and tasks < jobs:
        problems.append(
            f"{where}.quotas.running_tasks ({tasks}) must be at least running_jobs ({jobs}): "
            "every running job keeps one task going"
        )
    budget = raw.get("monthly_budget_usd")
    if budget is not None and (not _number(budget) or budget <= 0):
        problems.append(f"{where}.monthly_budget_usd must be a positive number or null; got {budget!r:.40}")
        budget = None
    return Tenant(
        name=name,
        weight=float(weight),
        principals=tuple(principals),
        quotas=Quotas(**values),
        monthly_budget_usd=None if budget is None else float(budget),
    )


def parse(data: Any, *, source: str = "cdk.json scheduling") -> Scheduling:
    """Validate the ``scheduling`` configuration; one ``SchedulingConfigError`` names every problem."""
    if data is None:
        return Scheduling()
    problems: list[str] = []
    if not isinstance(data, dict):
        raise SchedulingConfigError(source, [f"must be an object with {', '.join(_TOP)}"])
    problems.extend(f"{k} is not a setting (use {', '.join(_TOP)})" for k in data if k not in _TOP)
    window = data.get("window_per_lane", DEFAULT_WINDOW_PER_LANE)
    if window is not None and (not _positive_int(window) or window > MAX_WINDOW_PER_LANE):
        problems.append(
            f"window_per_lane must be an integer from 1 to {MAX_WINDOW_PER_LANE}; got {window!r:.40}"
        )
        window = DEFAULT_WINDOW_PER_LANE
    aging = data.get("priority_aging_seconds", DEFAULT_AGING_S)
    if not _number(aging) or not 1 <= aging <= MAX_AGING_S:
        problems.append(
            f"priority_aging_seconds must be a number from 1 to {MAX_AGING_S:g}; got {aging!r:.40}"
        )
        aging = DEFAULT_AGING_S
    raw_tenants = data.get("tenants") or {}
    tenants: dict[str, Tenant] = {}
    if not isinstance(raw_tenants, dict):
        problems.append("tenants must be an object: tenant name -> {weight, principals, quotas}")
    else:
        for name, raw in raw_tenants.items():
            tenant = _tenant(name, raw, f"tenants.{name}", problems)
            if tenant is not None:
                tenants[name] = tenant
    default = data.get("default_tenant", DEFAULT_TENANT)
    if default is not None and (bad := check_tenant_name(default)) is not None:
        problems.append(f"default_tenant: {bad}")
    elif default is not None and tenants and default not in tenants:
        problems.append(
            f"default_tenant '{default}' is not in tenants ({', '.join(sorted(tenants))}): add it, "
            "or set default_tenant to null so every request must name its tenant"
        )
    if problems:
        raise SchedulingConfigError(source, problems)
    return Scheduling(
        window_per_lane=None if window is None else int(window),
        priority_aging_seconds=float(aging),
        default_tenant=default,
        tenants=tenants,
    )
