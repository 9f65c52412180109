"""Context validation: cdk.json is the documented source of truth; bad values fail with the fix."""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import pytest

from stacks.application import build_app
from stacks.config import (
    CDK_JSON,
    REPO_ROOT,
    ConfigError,
    ShardqConfig,
    context_docs,
    load_cdk_json_context,
)


def test_cdk_json_context_equals_the_defaults() -> None:
    assert ShardqConfig.from_context(load_cdk_json_context()) == ShardqConfig()


def test_cdk_json_app_command_and_every_key_documented() -> None:
    cdk_json = json.loads(CDK_JSON.read_text())
    # Like the CDK's Python template: any activated environment synthesizes (no .venv path baked in).
    assert cdk_json["app"] == "python3 app.py"
    keys = {f.name for f in fields(ShardqConfig)}
    context = cdk_json["context"]
    assert context["//"] == context_docs(), "cdk.json's comments must say what stacks/config.py says"
    assert keys <= set(context)
    deploying = (REPO_ROOT / "docs" / "DEPLOYING.md").read_text()
    for key in keys:
        assert f"`{key}`" in deploying, key


def test_the_local_deploy_puts_the_venv_first_on_path() -> None:
    """`python3 app.py` must find the project's venv when the real CDK CLI deploys into the local cloud."""
    from shardq.local.deploy import cdk_env

    class _Cloud:
        def env(self) -> dict[str, str]:
            return {"AWS_ENDPOINT_URL": "http://127.0.0.1:1"}

    path = cdk_env(_Cloud(), REPO_ROOT)["PATH"].split(os.pathsep)  # type: ignore[arg-type]
    assert path[0] == str(REPO_ROOT / ".venv" / "bin")
    assert (REPO_ROOT / ".venv" / "bin" / "python3").exists()


def test_unknown_key_is_named_with_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"max_recieve_count: unknown context key.*fix: remove it"):
        ShardqConfig.from_context({"max_recieve_count": 5})


def test_every_bad_value_is_reported_in_one_error() -> None:
    with pytest.raises(ConfigError) as err:
        ShardqConfig.from_context(
            {
                "max_receive_count": 0,
                "log_level": "LOUD",
                "log_retention_days": 31,
                "dataset_bucket_arns": ["arn:aws:s3:::datasets/train"],
                "queue_encryption": "aes",
                "fifo_high_throughput": "yes",
                "stack_name": "1shardq",
            }
        )
    message = str(err.value)
    for expected in (
        "max_receive_count: must be an integer between 1 and 1000; 5 or more is recommended (got 0)",
        "log_level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
        "log_retention_days: must be one of 1, 3, 5, 7, 14, 30",
        "dataset_bucket_arns: must be a list of S3 bucket ARNs",
        "queue_encryption: must be one of sqs-managed, kms",
        "fifo_high_throughput: must be true or false",
        "stack_name: must be a CloudFormation stack name",
    ):
        assert expected in message


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        (
            {"queue_kms_key_arn": "arn:aws:kms:eu-west-1:123456789012:key/abcd-1234"},
            'queue_kms_key_arn: is only used with queue_encryption "kms"; fix: set queue_encryption',
        ),
        (
            {"aggregator_max_concurrency": 20, "aggregator_reserved_concurrency": 10},
            "aggregator_reserved_concurrency: 10 is below aggregator_max_concurrency (20)",
        ),
        (
            {"results_batch_window_seconds": 0},
            "results_batch_window_seconds: must be an integer between 1 and 300",
        ),
        ({"bool_is_not_int": 1}, "bool_is_not_int: unknown context key"),
        ({"job_ttl_days": True}, "job_ttl_days: must be an integer"),
        ({"alarm_email": "ops"}, "alarm_email: must be an email address"),
    ],
)
def test_rejected_values_and_combinations(context: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        ShardqConfig.from_context(context)
    assert expected in str(err.value)


def test_cli_strings_are_parsed() -> None:
    """`cdk synth -c key=value` passes strings."""
    config = ShardqConfig.from_context(
        {
            "max_receive_count": "7",
            "fifo_high_throughput": "true",
            "dataset_bucket_arns": '["arn:aws:s3:::datasets"]',
            "alarm_email": "",
            "tags": '{"team": "ml"}',
        }
    )
    assert config.max_receive_count == 7
    assert config.fifo_high_throughput is True
    assert config.dataset_bucket_arns == ("arn:aws:s3:::datasets",)
    assert config.alarm_email is None
    assert config.tags == {"team": "ml"}


def test_cdk_keys_and_comments_are_not_shardq_keys() -> None:
    config = ShardqConfig.from_context(
        {"@aws-cdk/core:checkSecretUsage": True, "aws:cdk:enable-path-metadata": True, "//": {"x": "y"}}
    )
    assert config == ShardqConfig()


def test_build_app_raises_the_config_error_before_building(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"task_visibility_timeout_seconds: must be an integer between 30 and 43200"
    ):
        build_app({**load_cdk_json_context(), "task_visibility_timeout_seconds": 5}, outdir=str(tmp_path))


def test_each_key_is_declared_once_with_its_parser_doc_and_default() -> None:
    """One definition per key: the dataclass field carries the parser and the doc."""
    for f in fields(ShardqConfig):
        assert callable(f.metadata["parse"]), f.name
        assert f.metadata["doc"].rstrip().endswith("."), f.name
        default = getattr(ShardqConfig(), f.name)
        # The documented default parses to itself: the parser accepts what the field defaults to.
        if default is not None and not isinstance(default, tuple | dict):
            assert f.metadata["parse"](default) == default, f.name


def test_combination_checks_run_with_per_key_problems_in_the_same_error() -> None:
    """A bad value and a bad combination elsewhere are both named, so one synth shows every fix."""
    with pytest.raises(ConfigError) as err:
        ShardqConfig.from_context(
            {"log_level": "LOUD", "aggregator_max_concurrency": 20, "aggregator_reserved_concurrency": 10}
        )
    message = str(err.value)
    assert "log_level: must be one of" in message
    assert "aggregator_reserved_concurrency: 10 is below aggregator_max_concurrency (20)" in message


def test_a_bad_key_is_not_blamed_again_by_a_combination_check() -> None:
    with pytest.raises(ConfigError) as err:
        ShardqConfig.from_context({"fleet_max_workers": "many", "fleet_on_demand_base_capacity": 20})
    message = str(err.value)
    assert "fleet_max_workers: must be an integer between 1 and 1000" in message
    assert "is above fleet_max_workers" not in message
