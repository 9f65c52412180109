"""X-Ray tracing for the handlers, paid for only where it traces.

Building Powertools' ``Tracer`` imports ``aws_xray_sdk.core``, whose import builds the SDK's
global recorder (and two botocore X-Ray clients for its sampler): about 100 ms of a handler's
cold start, paid even with ``POWERTOOLS_TRACE_DISABLED=true`` (BENCHMARKS.md, section 1).
``LazyTracer`` builds the real ``Tracer`` only where Powertools would trace: on AWS (active
tracing) the handlers get exactly the ``Tracer`` they had, built at import time as before,
with its ``## handler`` subsegment, ``ColdStart``/``Service`` annotations and boto3 patching;
where tracing is off, the decorators hand the function back unchanged and ``aws_xray_sdk``
is never imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from aws_lambda_powertools import Tracer

F = TypeVar("F", bound=Callable[..., Any])

# Powertools' own truth values for POWERTOOLS_TRACE_DISABLED (its strtobool).
_TRUTHY = frozenset({"1", "y", "yes", "t", "true", "on"})


def tracing_enabled(env: Mapping[str, str] = os.environ) -> bool:
    """Whether Powertools' ``Tracer`` would trace in this environment.

    The same rules as ``Tracer`` itself: off when ``POWERTOOLS_TRACE_DISABLED`` is true, off
    outside Lambda (no ``LAMBDA_TASK_ROOT``: tests, benchmarks, the CLI) and under SAM local or
    Chalice local, on otherwise. Where this says on and Powertools disagrees, the real
    ``Tracer`` is built and disables itself: the cost of today, never a lost trace.

    Parameters
    ----------
    env
        The environment to read (the process environment by default).

    Returns
    -------
    bool
        True where the handlers must build and apply the X-Ray tracer.
    """
    if env.get("POWERTOOLS_TRACE_DISABLED", "").lower() in _TRUTHY:
        return False
    if not env.get("LAMBDA_TASK_ROOT"):
        return False
    return not (env.get("AWS_SAM_LOCAL") or env.get("AWS_CHALICE_CLI_MODE"))


class LazyTracer:
    """Powertools' ``Tracer``, built on first use and only where tracing is on.

    Parameters
    ----------
    service
        The service name the real ``Tracer`` annotates subsegments with.
    """

    def __init__(self, service: str) -> None:
        self.service = service
        self._tracer: Tracer | None = None

    def get(self) -> Tracer | None:
        """The real ``Tracer`` (built once), or None where tracing is off."""
        if self._tracer is None and tracing_enabled():
            # Imported here: the package import is cheap, building the Tracer is what costs.
            from aws_lambda_powertools import Tracer

            self._tracer = Tracer(service=self.service)
        return self._tracer

    def capture_lambda_handler(self, handler: F) -> F:
        """``Tracer.capture_lambda_handler`` where tracing is on; ``handler`` itself where it is off.

        Decided when the decorator is applied (module import, the init phase), as the
        environment of a Lambda container does not change afterwards.
        """
        tracer = self.get()
        if tracer is None:
            return handler
        return cast(F, tracer.capture_lambda_handler(handler))
