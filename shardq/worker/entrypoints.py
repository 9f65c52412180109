"""Which function a task runs: the trust check, the import, and the function or hook it names.

Every user function a worker loads comes through ``resolve`` (the slot loop in
``shardq.worker.runtime`` and the child process of an isolated task, ``shardq.worker.isolation``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shardq.worker.code import load_module
from shardq.worker.trust import AllowList


class EntrypointError(RuntimeError):
    """The training function cannot be loaded here: every attempt on this worker would fail alike."""


def resolve(entrypoint: str, task_type: str, allow: AllowList) -> Callable[..., Any] | None:
    """The function to run: ``module:function`` for train, the module's ``reduce`` (or None) for reduce,
    its ``evaluate_global`` hook (or None) for ``"evaluate_global"``.

    ``allow`` is the worker's trust boundary (``shardq.worker.trust``): a module outside it is not
    imported at all. Every user function a worker loads comes through here.

    Raises ``EntrypointError`` when the module is not allowed, does not import or lacks the function.
    """
    module_name, _, func = entrypoint.partition(":")
    if (refusal := allow.refusal(entrypoint)) is not None:
        raise EntrypointError(refusal)
    try:
        # An edited module file is reloaded between tasks (shardq.worker.code).
        module = load_module(module_name)
    except Exception as exc:
        raise EntrypointError(
            f"entrypoint {entrypoint!r} cannot be loaded on this worker: {type(exc).__name__}: {exc}. "
            "Fix the request's entrypoint, or install the module in the worker's environment or image"
        ) from exc
    if task_type in ("reduce", "evaluate_global"):  # optional hooks: None when the module has none
        return getattr(module, task_type, None)
    fn = getattr(module, func, None)
    if fn is None:
        raise EntrypointError(
            f"entrypoint {entrypoint!r}: module {module_name} has no function {func!r}; fix the entrypoint"
        )
    return fn
