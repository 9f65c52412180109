"""The ``scheduling`` context key (tenants, weights, quotas, windows), read by path.

``cdk.json``'s ``scheduling`` must parse exactly as the Lambdas parse ``SHARDQ_SCHEDULING``, so
its shape is defined once, in ``shardq/core/tenancy.py`` (standard library only). As with
``stacks/worker_trust.py``, the stack loads that module by path instead of importing the ``shardq``
package (tests/unit/test_layering.py keeps stacks free of ``shardq`` imports).
"""

from __future__ import annotations

import json
from functools import cache
from types import ModuleType
from typing import Any

from stacks import by_path

_NAME = "_shardq_core_tenancy_by_path"


@cache
def tenancy() -> ModuleType:
    """``shardq/core/tenancy.py`` as a module of its own (parse, Scheduling, SchedulingConfigError)."""
    return by_path.load("core/tenancy.py", _NAME)


def scheduling_context(raw: Any) -> Any:
    """The parsed ``scheduling`` context value (a ``Scheduling``); raises ValueError naming each
    problem. ``-c scheduling='{...}'`` passes a string: it is read as JSON."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"must be a JSON object ({exc})") from exc
    try:
        return tenancy().parse(raw, source="scheduling")
    except tenancy().SchedulingConfigError as exc:
        raise ValueError("; ".join(exc.problems)) from exc


def tenant_principals(scheduling_json: str | None) -> dict[str, tuple[str, ...]]:
    """Tenant name → the IAM principals that may submit as it (``{}`` without a configuration)."""
    if scheduling_json is None:
        return {}
    return {t.name: tuple(t.principals) for t in scheduling_context(scheduling_json).tenants.values()}
