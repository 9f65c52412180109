"""The worker's AWS clients and how it tells a passing AWS error from one that ends the worker.

Retrying is botocore's job: every client a worker makes uses botocore's ``standard`` (or
``adaptive``) retry mode, which retries throttling, 5xx answers, timeouts and dropped
connections with jittered exponential backoff. What reaches the worker's code has outlived
those retries, and is sorted here into two kinds:

* **fatal** (``is_fatal``): no retry can help, and every slot would hit it again: access denied,
  a queue, table or bucket that does not exist, missing, invalid or expired credentials, no
  region. The worker stops and exits non-zero so its scheduler (Batch, ECS, systemd) sees it.
* everything else is **transient** for the worker: the slot logs it, backs off and polls again.
  A task it held is left to its visibility timeout (or released), so nothing is lost.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

# Error codes that no retry fixes: permissions, credentials, resources that are not there.
# Listed explicitly (not "every 4xx"): an unknown code is treated as transient, which at worst
# costs a backoff, whereas a wrong "fatal" would take a healthy worker out of the fleet.
FATAL_ERROR_CODES = frozenset(
    {
        # permissions
        "AccessDenied",
        "AccessDeniedException",
        "AllAccessDisabled",
        "AuthorizationError",
        "KMS.AccessDeniedException",
        "KMS.DisabledException",
        "KMS.NotFoundException",
        # credentials
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "ExpiredToken",
        "ExpiredTokenException",
        # resources that do not exist
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
        "NonExistentQueue",
        "ResourceNotFoundException",
        "NoSuchBucket",
        "InvalidAddress",
        # S3 answers a forbidden HEAD with a bare status code
        "403",
        "Forbidden",
    }
)

DEFAULT_RETRY_MODE = "standard"
# Attempts per call, the first included. botocore's standard backoff (random up to 2^n s, capped
# at 20 s) makes 6 attempts ride out about half a minute of throttling or an endpoint restart.
DEFAULT_MAX_ATTEMPTS = 6


class FatalAwsError(RuntimeError):
    """An AWS error no retry can fix (see ``is_fatal``): the worker must stop and exit non-zero."""


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ``ClientError`` (None for other exceptions)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    return str(response.get("Error", {}).get("Code") or "") or None


def is_fatal(exc: BaseException) -> bool:
    """True for an error that ends the worker: bad permissions, credentials or resources.

    Looks through the exception's causes too: boto3's ``upload_file`` re-raises an S3
    ``AccessDenied`` as ``S3UploadFailedError`` with the ``ClientError`` as its context.
    """
    from botocore.exceptions import NoCredentialsError, NoRegionError, PartialCredentialsError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, FatalAwsError | NoCredentialsError | PartialCredentialsError | NoRegionError):
            return True
        if error_code(current) in FATAL_ERROR_CODES:
            return True
        current = current.__cause__ or current.__context__
    return False


def describe(exc: BaseException) -> str:
    """One line naming the operation and the error, for logs and exit messages."""
    op = getattr(exc, "operation_name", None)
    return f"{op + ': ' if op else ''}{type(exc).__name__}: {exc}"


def worker_client(
    service: str,
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    retry_mode: str = DEFAULT_RETRY_MODE,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> Any:
    """A boto3 client for a worker slot (shardq's one client factory, ``shardq.core.clients``), with
    botocore's retry mode and a read timeout above the 20 s long poll.

    Parameters
    ----------
    service:
        ``sqs``, ``s3`` or ``dynamodb``.
    region, endpoint_url:
        As for boto3 (None: the standard chain and ``AWS_ENDPOINT_URL``).
    retry_mode:
        ``standard`` (default) or ``adaptive`` (adds client-side rate limiting on throttling).
    max_attempts:
        Attempts per call, the first included (>= 1).
    """
    from shardq.core.clients import new_client

    if retry_mode not in ("standard", "adaptive"):
        raise ValueError(f"retry_mode must be 'standard' or 'adaptive', got {retry_mode!r}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    return new_client(
        service,
        region=region,
        endpoint_url=endpoint_url,
        retry_mode=retry_mode,
        max_attempts=max_attempts,
        # A 20 s long poll must not look like a dead connection.
        read_timeout=60,
        max_pool_connections=10,
    )


@dataclass
class Backoff:
    """Full-jitter exponential backoff between failed polls: ``uniform(0, min(cap, base * 2^n))``.

    The slot waits the delay on its stop event, so a SIGTERM during a backoff is honoured at once.
    """

    base_s: float = 1.0
    cap_s: float = 30.0
    failures: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        """Count one more failure; the delay to wait before the next try."""
        self.failures += 1
        return self.rng.uniform(0, min(self.cap_s, self.base_s * 2 ** min(self.failures, 16)))

    def reset(self) -> None:
        """A call succeeded: start again from the base delay."""
        self.failures = 0
