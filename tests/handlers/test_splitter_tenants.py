"""The splitter takes a job's tenant from the alias it was invoked through (issue #25 item 2)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lambdas import common, splitter
from shardq.core.settings import Settings
from shardq.core.tenancy import invoked_tenant
from tests.helpers import LambdaContext, count_messages
from tests.requests import make_request

FUNCTION = "arn:aws:lambda:us-east-1:000000000000:function:shardq-Splitter"
CONFIG = {"tenants": {"default": {}, "vision": {"weight": 2}, "speech": {}}}


@pytest.fixture
def tenants_env(lambda_env: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("SHARDQ_SCHEDULING", json.dumps(CONFIG))
    common.engine.cache_clear()
    return lambda_env


def test_invoked_tenant_reads_only_tenant_aliases() -> None:
    assert invoked_tenant(f"{FUNCTION}:tenant-vision") == "vision"
    assert invoked_tenant(FUNCTION) is None
    assert invoked_tenant(f"{FUNCTION}:7") is None
    assert invoked_tenant(f"{FUNCTION}:live") is None
    assert invoked_tenant(None) is None


def test_a_request_through_a_tenant_alias_runs_as_that_tenant(
    tenants_env: Settings, clients: dict[str, Any]
) -> None:
    answer = splitter.handler(
        make_request("map", job_id="mine"), LambdaContext(invoked_function_arn=f"{FUNCTION}:tenant-speech")
    )
    assert answer["ok"] is True, answer
    assert common.engine().store.get_job("mine").request.tenant == "speech"


def test_a_request_claiming_another_tenant_is_refused_and_creates_nothing(
    tenants_env: Settings, clients: dict[str, Any]
) -> None:
    answer = splitter.handler(
        make_request("map", job_id="claim", tenant="vision"),
        LambdaContext(invoked_function_arn=f"{FUNCTION}:tenant-speech"),
    )
    assert answer["ok"] is False and answer["error"] == "ValidationError"
    assert "tenant 'vision' is not yours: this caller submits as tenant 'speech'" in answer["problems"][0]
    assert clients["dynamodb"].scan(TableName=tenants_env.job_table)["Items"] == []
    assert count_messages(clients["sqs"], tenants_env.task_queue_url) == 0


def test_an_unknown_tenant_is_refused_naming_the_known_ones(
    tenants_env: Settings, clients: dict[str, Any]
) -> None:
    answer = splitter.handler(make_request("map", job_id="x", tenant="audio"), LambdaContext())
    assert answer["ok"] is False
    assert "tenant 'audio' is unknown: use one of default, speech, vision" in answer["problems"][0]
    assert clients["dynamodb"].scan(TableName=tenants_env.job_table)["Items"] == []
