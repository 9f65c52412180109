"""The worker's allow-list parser, read by path (stacks import no runtime module).

``fleet_allow`` must parse exactly as ``shardq worker`` parses SHARDQ_ALLOW, so the pattern syntax
is defined once, in ``shardq/worker/trust.py``. Like the fleet's scaling rule
(``shardq/core/fleet_scaling.json``), the stack reads that definition by path instead of importing
the ``shardq`` package: the module is standard library only, and loading it here drags in no worker,
boto3 or Lambda code (tests/unit/test_layering.py keeps stacks free of ``shardq`` imports).
"""

from __future__ import annotations

from functools import cache
from types import ModuleType

from stacks import by_path

_NAME = "_shardq_worker_trust_by_path"


@cache
def trust() -> ModuleType:
    """``shardq/worker/trust.py`` as a module of its own (AllowList, AllowListError, ENV)."""
    return by_path.load("worker/trust.py", _NAME)
