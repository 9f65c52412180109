"""Load one standard-library-only module of the ``shardq`` package by its path.

Stacks import no ``shardq`` runtime module (tests/unit/test_layering.py), yet some context keys must
parse exactly as the runtime parses them (``fleet_allow`` as ``shardq worker``'s allow-list,
``scheduling`` as the Lambdas' tenancy). Such a definition lives once, in a module that imports only
the standard library, and the stack reads that file by path: nothing else of the package (no worker,
boto3 or Lambda code) comes with it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "shardq"


def load(relative: str, name: str) -> ModuleType:
    """``shardq/<relative>`` as a module of its own, registered as ``name`` (callers cache it)."""
    path = PACKAGE_ROOT / relative
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, f"{path} is missing"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look the module up while the class is built
    spec.loader.exec_module(module)
    return module
