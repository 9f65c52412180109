"""The one client factory: clients share what botocore loads, never a stale identity."""

from __future__ import annotations

import pytest

from shardq.core.clients import new_client


def _access_key(client: object) -> str:
    return client._request_signer._credentials.access_key  # type: ignore[attr-defined]


def test_clients_share_the_loaded_models_but_not_a_changed_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN credentials in the environment
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "first")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    # WHEN two clients are made for the same region, at two endpoints
    a = new_client("sqs", region="eu-west-1")
    b = new_client("sqs", region="eu-west-1", endpoint_url="http://127.0.0.1:9")
    # THEN botocore parsed the service model once for both, and each has its own endpoint
    assert a.meta.service_model._service_description is b.meta.service_model._service_description
    assert b.meta.endpoint_url == "http://127.0.0.1:9" and a.meta.endpoint_url != b.meta.endpoint_url
    # AND a client made after the environment's credentials changed uses the new ones
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "second")
    c = new_client("sqs", region="eu-west-1")
    assert (_access_key(a), _access_key(c)) == ("first", "second")
    # AND so do explicit credentials and another region
    d = new_client(
        "sqs", region="eu-west-1", credentials={"AWS_ACCESS_KEY_ID": "third", "AWS_SECRET_ACCESS_KEY": "s"}
    )
    assert _access_key(d) == "third"
    assert new_client("sqs", region="us-west-2").meta.region_name == "us-west-2"
    # AND the endpoint in the environment is read per client
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:7")
    assert new_client("sqs", region="eu-west-1").meta.endpoint_url == "http://127.0.0.1:7"
