"""boto3 clients: one factory for every part of shardq (Lambdas, CLI, workers).

boto3 honours ``AWS_ENDPOINT_URL`` (and per-service ``AWS_ENDPOINT_URL_SQS`` …) on its own,
which is how the same code reaches AWS or the local cloud.

botocore's retry mode is shardq's one retry layer for calls that fail as a whole
(throttling, 5xx, lost connections). Code above a client retries only what botocore cannot
see (SendMessageBatch entries reported failed, cancelled transactions), within its deadline.
"""

from __future__ import annotations

import functools
from typing import Any


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
    session = boto3.session.Session(
        region_name=region,
        aws_access_key_id=keys.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=keys.get("AWS_SECRET_ACCESS_KEY"),
    )
    return session.client(service, endpoint_url=endpoint_url, config=config)


@functools.cache
def client(service: str, region: str | None = None, endpoint_url: str | None = None) -> Any:
    """The process's shared client for ``service`` (a Lambda container builds each once)."""
    return new_client(service, region=region, endpoint_url=endpoint_url)
