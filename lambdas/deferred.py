"""Deferred module bodies: modules a dependency imports that a handler's path never uses.

Powertools' batch utility costs ≈ 17 ms of the aggregator's and the DLQ handler's cold start
(BENCHMARKS.md, section 1), and most of it runs code those handlers never call:

- its base module imports ``asyncio`` (≈ 7 ms) for ``AsyncBatchProcessor`` only; the
  synchronous processors the handlers use never touch it;
- ``SQSRecord``'s module takes ``S3Event`` from the package ``utilities.data_classes``, whose
  ``__init__`` imports every event class Powertools has (≈ 6 ms beyond the few the batch
  utility needs: SQS, S3, SNS, DynamoDB, Kinesis and Kafka records).

``defer_import`` puts a module object in ``sys.modules`` whose body has not run yet. ``import
asyncio`` binds it without running anything (the import system reads ``__spec__`` and
``__path__``, which are in its namespace already), a submodule imports through its ``__path__``
as usual, and the first attribute it does not have yet (``asyncio.run``, ``from asyncio import
Queue``) runs the real body in that same object, under a lock, so every reference taken earlier
sees the real module. A package can name attributes it ``provides`` from one submodule each
(``S3Event`` from ``.s3_event``): such a lookup imports only that submodule. Code that uses the
module pays its import then; the handlers never do. The standard library's
``importlib.util.LazyLoader`` cannot do this: any attribute access, including the ``__spec__``
every ``import`` statement reads, runs its module.

Nothing here changes what the handlers call: they use Powertools' public batch API as before.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import threading
import types
from collections.abc import Mapping
from typing import Any

_LOCK = threading.RLock()
_LOADING = "__deferred_loading__"
# Deferred package name -> {attribute: submodule (relative) that defines it}.
_PROVIDES: dict[str, Mapping[str, str]] = {}
_log = logging.getLogger(__name__)


class _Deferred(types.ModuleType):
    """A module whose body runs on the first lookup of an attribute it does not have yet."""

    def __getattr__(self, name: str) -> Any:
        # Called only for a missing attribute: the spec, path and file are in the namespace already.
        with _LOCK:
            if self.__dict__.get(_LOADING):
                # Re-entered from the module's own body (its imports probe the package): not there yet.
                raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
            if type(self) is _Deferred:
                submodule = _PROVIDES.get(self.__name__, {}).get(name)
                if submodule is not None:
                    value = getattr(importlib.import_module(submodule, self.__name__), name)
                    self.__dict__[name] = value
                    return value
                self._run_body()
        return getattr(self, name)

    def _run_body(self) -> None:
        self.__dict__[_LOADING] = True
        try:
            self.__spec__.loader.exec_module(self)  # type: ignore[union-attr]
        finally:
            del self.__dict__[_LOADING]
        # Only now: another thread's lookup waits on the lock instead of seeing a half-run module.
        self.__class__ = types.ModuleType  # type: ignore[assignment]
        _PROVIDES.pop(self.__name__, None)


def defer_import(name: str, provides: Mapping[str, str] | None = None) -> bool:
    """Register ``name`` so that its body runs on first real use instead of on import.

    A no-op when the module is already imported (by the runtime, a test runner or anything
    else), or cannot be found.

    Parameters
    ----------
    name
        A module or package, e.g. ``"asyncio"``; a submodule's parent package is imported.
    provides
        For a package: attributes its importers take from it, each mapped to the submodule that
        defines it (relative, e.g. ``{"S3Event": ".s3_event"}``); looking one up imports only that
        submodule. Any other missing attribute runs the package's body.

    Returns
    -------
    bool
        True when ``name`` is now deferred.
    """
    with _LOCK:
        if name in sys.modules:
            return False
        spec = importlib.util.find_spec(name)  # imports the parent package of a submodule
        if spec is None or spec.loader is None:
            return False
        module = importlib.util.module_from_spec(spec)
        module.__class__ = _Deferred
        if provides:
            _PROVIDES[name] = dict(provides)
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            # What a normal import does once the module has run: the parent package names it.
            setattr(sys.modules[parent], child, module)
        return True


def import_deferring(module: str, package: str, provides: Mapping[str, str]) -> types.ModuleType:
    """Import ``module`` with ``package``'s body deferred (``defer_import``); normally if that fails.

    A package's submodule may take a name from the package that ``provides`` does not list (a
    newer release of the dependency, say); the package's body then runs from inside that
    submodule's import and fails on the half-imported submodule. The deferral is then undone
    and ``module`` imported as usual: a slower cold start, never a broken one.

    Parameters
    ----------
    module
        What to import, e.g. ``"aws_lambda_powertools.utilities.batch"``.
    package
        The package to defer while importing it.
    provides
        As for ``defer_import``.

    Returns
    -------
    types.ModuleType
        The imported ``module``.
    """
    if not defer_import(package, provides):
        return importlib.import_module(module)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        _log.warning("deferring %s failed (%s); importing it as usual", package, exc)
        _forget(package)
        for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
            del sys.modules[name]
        return importlib.import_module(module)


def import_powertools_batch() -> types.ModuleType:
    """Powertools' batch utility, with what its synchronous processors never run deferred.

    ``asyncio`` (for ``AsyncBatchProcessor`` only) and the body of the package
    ``utilities.data_classes``, of which ``SQSRecord``'s module takes only ``S3Event``.

    Returns
    -------
    types.ModuleType
        ``aws_lambda_powertools.utilities.batch``.
    """
    defer_import("asyncio")
    return import_deferring(
        "aws_lambda_powertools.utilities.batch",
        package="aws_lambda_powertools.utilities.data_classes",
        provides={"S3Event": ".s3_event"},
    )


def _forget(name: str) -> None:
    """Drop a deferred module that never ran, so the next import of ``name`` runs it afresh."""
    with _LOCK:
        if is_deferred(name):
            del sys.modules[name]
            _PROVIDES.pop(name, None)
            parent, _, child = name.rpartition(".")
            if parent and parent in sys.modules:
                sys.modules[parent].__dict__.pop(child, None)


def is_deferred(name: str) -> bool:
    """Whether ``name`` is registered by ``defer_import`` and its body has not run yet."""
    return type(sys.modules.get(name)) is _Deferred
