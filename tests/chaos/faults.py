"""Transient AWS faults injected at the botocore level, on real clients talking to the local cloud.

``FaultInjector.attach(client)`` registers a ``before-send`` handler on a real boto3 client. For
a chosen call (by operation name) the handler, instead of letting botocore send it, answers
with one of these faults; botocore's own retry mode then sees exactly what it would see from
AWS:

* ``connect``: ``EndpointConnectionError`` (nothing reached the server);
* ``5xx``: HTTP 503 ServiceUnavailable (nothing done);
* ``throttle``: a throttling error (``ThrottlingException`` on JSON services, S3's ``SlowDown``);
* ``lost``: the request *is* sent and done, then the connection drops before the answer
  (``ConnectionClosedError``): botocore retries a call that already happened.

Which calls fail: each with probability ``p`` (seeded), plus, per operation, one **burst** of
``n`` consecutive failures after its first ``burst_after`` calls — with ``n`` at least the client's
``max_attempts``, a burst outlives botocore's retries and reaches the worker's code. Each
operation in ``lost_once`` loses one answer (after its first ``burst_after`` calls). ``fatal``
maps an operation to an error code no retry fixes (e.g. ``AccessDenied``), answered to every
call of it after the first ``fatal_after``. Every injection is appended to ``log_path`` (one
JSON line, O_APPEND) when given.

``python -m tests.chaos.faults -- <shardq args>`` runs the shardq CLI with every boto3 client
it creates wired to an injector configured by ``$SHARDQ_FAULTS`` (JSON of the constructor's
arguments): how the chaos suite gives real worker processes faulty networks.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Every AWS call a worker makes: the poll, the cancellation check, the result, the delete, the
# heartbeat/release, and the bucket: a task's model and artifacts up to 8 MiB move in one GetObject /
# PutObject (``shardq.worker.artifacts.SINGLE_REQUEST_MAX``); only larger ones, a data fetch and a
# checkpoint use boto3's managed transfer, which asks HeadObject too (not on these tests' paths).
WORKER_OPERATIONS = (
    "ReceiveMessage",
    "GetItem",
    "SendMessage",
    "DeleteMessage",
    "ChangeMessageVisibility",
    "GetObject",
    "PutObject",
)
KINDS = ("connect", "5xx", "throttle", "lost")
ENV = "SHARDQ_FAULTS"


class _Raw:
    """The slice of a urllib3 response botocore reads from an ``AWSResponse``."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        yield self.body


@dataclass
class FaultInjector:
    """Seeded transient faults for chosen operations (see the module docstring)."""

    seed: int = 0
    p: float = 0.0
    operations: tuple[str, ...] = WORKER_OPERATIONS
    kinds: tuple[str, ...] = ("connect", "5xx", "throttle")
    bursts: dict[str, int] = field(default_factory=dict)
    burst_after: int = 1
    lost_once: tuple[str, ...] = ()
    fatal: dict[str, str] = field(default_factory=dict)
    fatal_after: int = 0
    log_path: str | None = None
    calls: dict[str, int] = field(default_factory=dict)
    injected: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.lock = threading.Lock()
        self.burst_left = dict(self.bursts)
        self.lost_left = set(self.lost_once)

    def attach(self, client: Any) -> Any:
        """Wire this injector into a real boto3 client; returns the client."""
        client.meta.events.register("before-send", self.before_send)
        return client

    def before_send(self, request: Any, event_name: str = "", **kwargs: Any) -> Any:
        """botocore's ``before-send`` hook: a fault for this call, or None to send it for real."""
        op = event_name.rsplit(".", 1)[-1]
        kind = self._choose(op)
        if kind is None:
            return None
        self._record(op, kind)
        return self._fault(kind, op, request)

    def _choose(self, op: str) -> str | None:
        with self.lock:
            n = self.calls[op] = self.calls.get(op, 0) + 1
            if op in self.fatal and n > self.fatal_after:
                return "fatal"
            if op not in self.operations:
                return None
            if n > self.burst_after and op in self.lost_left:
                self.lost_left.discard(op)
                return "lost"
            if n > self.burst_after and self.burst_left.get(op, 0) > 0:
                self.burst_left[op] -= 1
                return self.rng.choice(tuple(k for k in self.kinds if k != "lost") or ("5xx",))
            if self.p and self.rng.random() < self.p:
                return self.rng.choice(self.kinds)
            return None

    def _record(self, op: str, kind: str) -> None:
        with self.lock:
            self.injected[op] = self.injected.get(op, 0) + 1
        if self.log_path:
            line = json.dumps({"op": op, "kind": kind, "pid": os.getpid(), "t": time.time()}) + "\n"
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

    def _fault(self, kind: str, op: str, request: Any) -> Any:
        from botocore.awsrequest import AWSResponse
        from botocore.exceptions import ConnectionClosedError, EndpointConnectionError
        from botocore.httpsession import URLLib3Session

        if kind == "connect":
            raise EndpointConnectionError(endpoint_url=request.url)
        if kind == "lost":
            URLLib3Session().send(request)  # done on the server; the answer never arrives
            raise ConnectionClosedError(endpoint_url=request.url)
        s3 = "s3." in request.url or op in ("HeadObject", "GetObject", "PutObject")
        code, status = {
            "5xx": ("ServiceUnavailable", 503),
            "throttle": ("SlowDown", 503) if s3 else ("ThrottlingException", 400),
            "fatal": (self.fatal.get(op, "AccessDenied"), 403),
        }[kind]
        if s3:
            body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
            headers = {"Content-Type": "application/xml"}
        else:
            body = json.dumps({"__type": code, "message": "injected"}).encode()
            headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-query-error": f"{code};Sender"}
        return AWSResponse(request.url, status, headers, _Raw(body))


def injections(log_path: Path) -> list[dict[str, Any]]:
    """Every injection logged to ``log_path`` (all processes), oldest first."""
    if not log_path.exists():
        return []
    return [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]


def _install(injector: FaultInjector) -> None:
    """Attach ``injector`` to every boto3 client this process creates."""
    import boto3.session

    original = boto3.session.Session.client

    def client(self: Any, *args: Any, **kwargs: Any) -> Any:
        return injector.attach(original(self, *args, **kwargs))

    boto3.session.Session.client = client  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    """Run the shardq CLI with faults from ``$SHARDQ_FAULTS`` on every client."""
    spec = json.loads(os.environ.get(ENV) or "{}")
    for key in ("operations", "kinds"):
        if key in spec:
            spec[key] = tuple(spec[key])
    _install(FaultInjector(**spec))
    from shardq.cli import main as shardq_main

    return shardq_main(argv[1:] if argv[:1] == ["--"] else argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
