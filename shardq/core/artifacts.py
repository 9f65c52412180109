"""JSON objects the coordination plane keeps in the artifact bucket (claim checks, manifests), and
``read_object``: a GetObject whose stream, cut short, is read again (workers and the plane alike)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from s3transfer.utils import S3_RETRYABLE_DOWNLOAD_ERRORS

from shardq.core.contracts import finite_or_name

# A stream cut short mid-body (a dropped connection, a read timeout) is read again from the start,
# as the managed download does: its errors and its default number of attempts (s3transfer's
# ``S3_RETRYABLE_DOWNLOAD_ERRORS``, ``TransferConfig.num_download_attempts``). A network blip must
# not fail a shard and throw its training away. Only the body's read is retried here: botocore's
# own retries already cover the request (its status and headers).
DOWNLOAD_ATTEMPTS = 5
DOWNLOAD_BACKOFF_S = 0.2  # doubled after each cut stream, at most 2 s

log = logging.getLogger(__name__)
T = TypeVar("T")


def read_object(s3: Any, bucket: str, key: str, consume: Callable[[dict[str, Any]], T]) -> T:
    """``consume`` a GetObject response (its ``Body`` a stream): on a stream cut short (a
    retryable read error) the object is requested and consumed again, after a short backoff,
    ``DOWNLOAD_ATTEMPTS`` times in all, each cut logged. Errors of the request itself (a missing
    key, a denied call, botocore's exhausted retries) are raised at once."""
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        response = s3.get_object(Bucket=bucket, Key=key)
        try:
            return consume(response)
        except S3_RETRYABLE_DOWNLOAD_ERRORS as exc:
            response["Body"].close()
            if attempt == DOWNLOAD_ATTEMPTS:
                raise
            log.warning(
                "reading s3://%s/%s was cut short (%s); reading it again (attempt %d of %d)",
                bucket,
                key,
                exc,
                attempt + 1,
                DOWNLOAD_ATTEMPTS,
            )
            time.sleep(min(DOWNLOAD_BACKOFF_S * 2 ** (attempt - 1), 2.0))
    raise AssertionError("unreachable: the last attempt returns or raises")


def read_bytes(s3: Any, bucket: str, key: str) -> bytes:
    """The whole object's bytes (``read_object``: a cut stream is read again)."""
    return read_object(s3, bucket, key, lambda response: bytes(response["Body"].read()))


def standard(value: Any) -> Any:
    """``value`` with every non-finite float replaced by its name (``"nan"``, ``"inf"``, ``"-inf"``).

    What shardq writes for people and other programs (manifests, ``--json``, the dashboard's API)
    is standard JSON, which has no NaN or Infinity: Python would write the non-standard tokens,
    which ``JSON.parse`` and most other parsers refuse. A diverged trial's metrics are the
    expected case (``shardq.core.verdicts``); anything else that slips through is shown the same
    way instead of failing the write (and with it the job's finalize).
    """
    if isinstance(value, float):
        return finite_or_name(value)
    if isinstance(value, dict):
        return {k: standard(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [standard(v) for v in value]
    return value


def dumps_standard(data: Any, **options: Any) -> str:
    """``json.dumps`` of ``standard(data)``, refusing NaN and Infinity (``allow_nan=False``)."""
    return json.dumps(standard(data), allow_nan=False, **options)


def put_json(s3: Any, bucket: str, key: str, data: dict[str, Any]) -> None:
    """Write ``data`` as indented, key-sorted, standard JSON (deterministic: racing writers agree)."""
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=dumps_standard(data, indent=2, sort_keys=True, default=str).encode(),
        ContentType="application/json",
    )
