"""boto3 clients: one factory for every part of shardq (Lambdas, CLI, workers).

boto3 honours ``AWS_ENDPOINT_URL`` (and per-service ``AWS_ENDPOINT_URL_SQS`` …) on its own,
which is how the same code reaches AWS or the local cloud.

botocore's retry mode is shardq's one retry layer for calls that fail as a whole
(throttling, 5xx, lost connections). Code above a client retries only what botocore cannot
see (SendMessageBatch entries reported failed, cancelled transactions), within its deadline.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

# What a boto3 session reads from the environment when it is made (credentials, profile, region):
# a client made under other values gets a session of its own. The endpoint (AWS_ENDPOINT_URL…) is
# read per client.
SESSION_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)
_sessions: dict[tuple[str | None, ...], Any] = {}
_sessions_lock = threading.Lock()


def new_client(
    service: str,
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    retry_mode: str = "standard",
    max_attempts: int = 5,
    read_timeout: float = 30,
    max_pool_connections: int = 64,
    credentials: dict[str, str] | None = None,
) -> Any:
    """A new boto3 client with shardq's network settings.

    Parameters
    ----------
    retry_mode, max_attempts:
        botocore's retry mode and attempts (the first call included). ``standard`` by default:
        measured with benchmarks/quota.py, ``adaptive``'s client-side rate limiter slowed a FIFO
        fan-out to 31–90 % of the quota after its first throttles, ``standard`` held 100 %.
    read_timeout:
        Seconds; must exceed a long poll's wait (20 s) for SQS receivers.
    max_pool_connections:
        Room for the fan-out's concurrent calls (up to 32 in high-throughput mode) and the rest.
    credentials:
        ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` values; by default boto3's own chain.

    Clients of the same region, credentials and environment come from one boto3 session, so
    botocore parses its service models and endpoint data once per process: ≈ 6 ms a client
    instead of ≈ 110 ms (a Lambda's cold start builds four; the CLI several per command). A
    session is not thread-safe, so clients are made under a lock; the clients themselves are.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        # total_max_attempts counts the first call; botocore's max_attempts counts retries only.
        retries={"mode": retry_mode, "total_max_attempts": max_attempts},
        max_pool_connections=max_pool_connections,
        connect_timeout=5,
        read_timeout=read_timeout,
        tcp_keepalive=True,
    )
    keys = credentials or {}
    identity = (keys.get("AWS_ACCESS_KEY_ID"), keys.get("AWS_SECRET_ACCESS_KEY"))
    key = (region, *identity, *(os.environ.get(name) for name in SESSION_ENV))
    with _sessions_lock:
        session = _sessions.get(key)
        if session is None:
            session = _sessions[key] = boto3.session.Session(
                region_name=region, aws_access_key_id=identity[0], aws_secret_access_key=identity[1]
            )
        return session.client(service, endpoint_url=endpoint_url, config=config)


@functools.cache
def client(service: str, region: str | None = None, endpoint_url: str | None = None) -> Any:
    """The process's shared client for ``service`` (a Lambda container builds each once)."""
    return new_client(service, region=region, endpoint_url=endpoint_url)
