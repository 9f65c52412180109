"""boto3 clients, created once per process and shared across invocations.

boto3 honours ``AWS_ENDPOINT_URL`` (and per-service ``AWS_ENDPOINT_URL_SQS`` …)
on its own, which is how the same code reaches AWS or the local cloud.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def client(service: str, region: str | None = None, endpoint_url: str | None = None) -> Any:
    """A boto3 client with standard retries and room for the fan-out's parallel calls."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        # Room for the fan-out's concurrent calls (up to 32 in high-throughput mode) and the rest.
        max_pool_connections=64,
        connect_timeout=5,
        read_timeout=30,
        tcp_keepalive=True,
    )
    return boto3.session.Session().client(
        service, region_name=region, endpoint_url=endpoint_url, config=config
    )
