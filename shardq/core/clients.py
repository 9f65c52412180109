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
    retry_mode: str = "adaptive",
    max_attempts: int = 5,
    read_timeout: float = 30,
    max_pool_connections: int = 64,
) -> Any:
    """A new boto3 client with shardq's network settings.

    Parameters
    ----------
    retry_mode, max_attempts:
        botocore's retry mode: ``adaptive`` (default) is ``standard`` plus client-side rate
        limiting, which slows a fan-out that meets the FIFO quota instead of spending its
        retries; ``max_attempts`` counts the first call.
    read_timeout:
        Seconds; must exceed a long poll's wait (20 s) for SQS receivers.
    max_pool_connections:
        Room for the fan-out's concurrent calls (up to 32 in high-throughput mode) and the rest.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": retry_mode, "max_attempts": max_attempts},
        max_pool_connections=max_pool_connections,
        connect_timeout=5,
        read_timeout=read_timeout,
        tcp_keepalive=True,
    )
    return boto3.session.Session(region_name=region).client(service, endpoint_url=endpoint_url, config=config)


@functools.cache
def client(service: str, region: str | None = None, endpoint_url: str | None = None) -> Any:
    """The process's shared client for ``service`` (a Lambda container builds each once)."""
    return new_client(service, region=region, endpoint_url=endpoint_url)
