"""Fan-out: put many messages on an SQS queue fast, exactly once, within the quota.

SendMessageBatch carries up to 10 entries (and a byte limit), several batches
are in flight at once, and entries SQS reports as failed are retried with
exponential backoff and full jitter. Deduplication ids make retries safe: an
entry that SQS accepted but whose answer was lost is dropped by the queue.

One retry layer per kind of failure: a call that fails as a whole (throttling — the
FIFO quota is 300 calls/s per action —, 5xx, a lost connection) is retried by the
client's botocore retry mode, and what reaches us after that is final; botocore cannot
see entries a successful call reports as failed, so those are retried here, within the
attempts and the caller's deadline.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

MAX_BATCH_ENTRIES = 10
# SQS raised the payload limit to 1 MiB in 2025; many tools and regions' SDK docs still
# say 256 KiB, so the batch (all entries together) stays under the older figure by default.
DEFAULT_MAX_BATCH_BYTES = 256 * 1024
THROTTLE_CODES = frozenset(
    {
        "RequestThrottled",
        "ThrottlingException",
        "Throttling",
        "AWS.SimpleQueueService.RequestThrottled",
        "KmsThrottled",
        "KMS.ThrottlingException",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
    }
)


@dataclass(frozen=True)
class Message:
    """One message to send: body plus FIFO attributes (both None on a standard queue)."""

    body: str
    group_id: str | None = None
    dedup_id: str | None = None

    def entry(self, entry_id: str) -> dict[str, Any]:
        """The SendMessageBatch entry for this message."""
        out: dict[str, Any] = {"Id": entry_id, "MessageBody": self.body}
        if self.group_id is not None:
            out["MessageGroupId"] = self.group_id
        if self.dedup_id is not None:
            out["MessageDeduplicationId"] = self.dedup_id
        return out

    @property
    def size(self) -> int:
        """Bytes the message counts against the batch limit (body plus attributes, roughly)."""
        return len(self.body.encode()) + len(self.group_id or "") + len(self.dedup_id or "")


class FanOutError(RuntimeError):
    """Some messages could not be sent; ``unsent`` holds them so the caller can resume."""

    def __init__(self, message: str, unsent: Sequence[Message]) -> None:
        super().__init__(message)
        self.unsent = list(unsent)


@dataclass
class FanOutStats:
    """What a fan-out cost: messages sent, API calls, retries and throttles."""

    sent: int = 0
    api_calls: int = 0
    retried_entries: int = 0
    throttled_calls: int = 0
    elapsed_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Thread-safe increments."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


def batches(messages: Iterable[Message], max_bytes: int = DEFAULT_MAX_BATCH_BYTES) -> Iterable[list[Message]]:
    """Group messages into batches of at most 10 entries and ``max_bytes`` together, in order."""
    batch: list[Message] = []
    size = 0
    for msg in messages:
        if msg.size > max_bytes:
            raise ValueError(
                f"message of {msg.size} bytes exceeds the {max_bytes} byte limit; use a claim check"
            )
        if batch and (len(batch) == MAX_BATCH_ENTRIES or size + msg.size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(msg)
        size += msg.size
    if batch:
        yield batch


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class FanOut:
    """Sends messages to one queue with bounded concurrency and retries.

    Parameters
    ----------
    sqs:
        A boto3 SQS client (its botocore retry mode retries throttled and failed calls).
    queue_url:
        The destination queue.
    max_in_flight:
        SendMessageBatch calls in flight at once.
    max_attempts:
        Attempts per entry before the fan-out gives up with ``FanOutError``.
    base_delay, max_delay:
        Exponential backoff with full jitter between attempts, in seconds.
    sleep, clock:
        Injected for tests and the quota model; ``time.sleep`` and ``time.time`` by default.
    """

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        *,
        max_in_flight: int = 8,
        max_attempts: int = 10,
        base_delay: float = 0.05,
        max_delay: float = 5.0,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.max_in_flight = max_in_flight
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_batch_bytes = max_batch_bytes
        self.sleep = sleep
        self.clock = clock

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay, self.base_delay * (2**attempt)))

    def _send_batch(self, batch: list[Message], stats: FanOutStats, deadline: float | None) -> None:
        """Send one batch until every entry is accepted, or attempts or time run out."""
        pending = {str(i): m for i, m in enumerate(batch)}
        tries = 0
        for attempt in range(self.max_attempts):
            if attempt:
                pause = self._backoff(attempt)
                if deadline is not None and self.clock() + pause > deadline:
                    break
                self.sleep(pause)
            try:
                tries += 1
                stats.add(api_calls=1)
                response = self.sqs.send_message_batch(
                    QueueUrl=self.queue_url, Entries=[m.entry(i) for i, m in pending.items()]
                )
            except Exception as exc:
                # botocore already retried what a retry can fix (its retry mode is the one layer
                # for whole-call failures); count throttling for the stats and give up.
                if _error_code(exc) in THROTTLE_CODES:
                    stats.add(throttled_calls=1)
                raise FanOutError(f"SendMessageBatch failed: {exc}", list(pending.values())) from exc
            accepted = [ok["Id"] for ok in response.get("Successful", []) if ok["Id"] in pending]
            for entry_id in accepted:
                del pending[entry_id]
            stats.add(sent=len(accepted))
            failed = response.get("Failed", [])
            permanent = [f for f in failed if f.get("SenderFault") and f.get("Code") not in THROTTLE_CODES]
            if permanent:
                f = permanent[0]
                raise FanOutError(
                    f"SQS rejected message {f['Id']}: {f.get('Code')} {f.get('Message', '')}",
                    list(pending.values()),
                )
            if not pending:
                return
            stats.add(retried_entries=len(pending))
            batch = list(pending.values())
            pending = {str(i): m for i, m in enumerate(batch)}
        raise FanOutError(
            f"{len(pending)} messages still unsent after {tries} attempts", list(pending.values())
        )

    def send(
        self,
        messages: Iterable[Message],
        *,
        stats: FanOutStats | None = None,
        deadline: float | None = None,
    ) -> FanOutStats:
        """Send every message; raises ``FanOutError`` (after the in-flight batches settle) if any fail.

        ``deadline`` (seconds since the epoch): no entry retry starts after it.
        """
        stats = stats or FanOutStats()
        started = time.perf_counter()
        errors: list[BaseException] = []
        with ThreadPoolExecutor(max_workers=self.max_in_flight, thread_name_prefix="fanout") as pool:
            in_flight: set[Future[None]] = set()
            for batch in batches(messages, self.max_batch_bytes):
                if errors:
                    break
                if len(in_flight) >= self.max_in_flight:
                    done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    errors.extend(e for f in done if (e := f.exception()) is not None)
                    if errors:
                        break
                in_flight.add(pool.submit(self._send_batch, batch, stats, deadline))
            done, _ = wait(in_flight)
            errors.extend(e for f in done if (e := f.exception()) is not None)
        stats.elapsed_s += time.perf_counter() - started
        if errors:
            first = errors[0]
            unsent = [m for e in errors if isinstance(e, FanOutError) for m in e.unsent]
            raise FanOutError(str(first), unsent) from first
        return stats
