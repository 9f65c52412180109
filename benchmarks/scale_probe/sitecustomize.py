"""A probe loaded into every Lambda process the local cloud starts (``benchmarks.scale``).

ministack runs a Python function in a warm subprocess of its own interpreter, with its own
environment plus the function's. ``benchmarks.scale`` puts this folder on ``PYTHONPATH``
before it starts the local cloud, so Python imports this ``sitecustomize`` at the start of
every process it spawns; it does nothing unless the process is a Lambda (the runtime sets
``AWS_LAMBDA_FUNCTION_NAME``) and the benchmark asked for it (``SHARDQ_SCALE_PROBE_DIR``).

In a Lambda process it counts its invocations (the runtime reads one line from stdin per
event, after one init line), every AWS API call the handler makes (botocore's
``BaseClient._make_api_call``), with the DynamoDB write requests inside it (a
``TransactWriteItems`` of 100 actions is 100 write requests), and every 2 s and at exit writes
``<dir>/<function>-<pid>.json``: the counts, the process's peak resident set (``VmHWM`` from
``/proc/self/status``, the figure Lambda reports as "Max Memory Used" for a container) and,
with ``SHARDQ_SCALE_TRACEMALLOC=1``, the peak of Python allocations (``tracemalloc``).
"""

from __future__ import annotations

import os

_DIR = os.environ.get("SHARDQ_SCALE_PROBE_DIR")
_FUNCTION = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")

if _DIR and _FUNCTION:
    import atexit
    import contextlib
    import json
    import sys
    import threading
    import time
    from typing import Any

    _calls: dict[str, int] = {}
    _writes = {"requests": 0}
    # The local cloud's Python runtime reads one init line, then one line per invocation.
    _lines = {"read": 0}
    _lock = threading.Lock()
    _tracing = os.environ.get("SHARDQ_SCALE_TRACEMALLOC") == "1"
    if _tracing:
        import tracemalloc

        tracemalloc.start()

    def _write_requests(operation: str, params: dict) -> int:
        """DynamoDB write requests in one call (each item of a batch or transaction is one)."""
        if operation in ("PutItem", "UpdateItem", "DeleteItem"):
            return 1
        if operation == "TransactWriteItems":
            return len(params.get("TransactItems", ()))
        if operation == "BatchWriteItem":
            return sum(len(v) for v in params.get("RequestItems", {}).values())
        return 0

    def _status_kib(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def _dump() -> None:
        with _lock:
            data = {
                "function": _FUNCTION,
                "pid": os.getpid(),
                "calls": dict(_calls),
                "ddb_write_requests": _writes["requests"],
                "invocations": max(0, _lines["read"] - 1),
                "vmhwm_kib": _status_kib("VmHWM"),
                "vmrss_kib": _status_kib("VmRSS"),
                "tracemalloc_peak_bytes": tracemalloc.get_traced_memory()[1] if _tracing else None,
                "at": time.time(),
            }
        path = os.path.join(str(_DIR), f"{_FUNCTION}-{os.getpid()}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(data, f)
        os.replace(path + ".tmp", path)

    def _loop() -> None:
        while True:
            time.sleep(2.0)
            try:
                _dump()
            except OSError:
                return

    def _install() -> None:
        from botocore.client import BaseClient

        original = BaseClient._make_api_call

        def counted(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
            service = self.meta.service_model.service_name
            with _lock:
                key = f"{service}.{operation_name}"
                _calls[key] = _calls.get(key, 0) + 1
                if service == "dynamodb":
                    _writes["requests"] += _write_requests(operation_name, api_params)
            return original(self, operation_name, api_params)

        setattr(BaseClient, "_make_api_call", counted)  # noqa: B010 (patching a method on purpose)

    class _CountingStdin:
        """``sys.stdin`` that counts the lines read (the runtime's init line and each event)."""

        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def readline(self, *args: Any) -> Any:
            line = self._inner.readline(*args)
            if line:
                with _lock:
                    _lines["read"] += 1
            return line

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    with contextlib.suppress(ImportError):
        _install()
    setattr(sys, "stdin", _CountingStdin(sys.stdin))  # noqa: B010 (a proxy, not a TextIO)
    atexit.register(_dump)
    threading.Thread(target=_loop, name="shardq-scale-probe", daemon=True).start()
