"""Settings come from the environment once, with one error naming every problem."""

from __future__ import annotations

from dataclasses import fields

import pytest

from shardq.core.settings import Settings, SettingsError

BASE = {
    "SHARDQ_JOB_TABLE": "t",
    "SHARDQ_TASK_QUEUE_URL": "q",
    "SHARDQ_RESULTS_QUEUE_URL": "r",
    "SHARDQ_ARTIFACT_BUCKET": "b",
}


def test_defaults_and_round_trip() -> None:
    s = Settings.from_env(BASE)
    assert (s.event_bus_name, s.max_receive_count, s.fanout_in_flight, s.splitter_function) == (
        "default",
        5,
        8,
        None,
    )
    assert Settings.from_env(s.as_env()) == s


def test_high_throughput_fan_out_concurrency_is_read() -> None:
    assert Settings.from_env({**BASE, "SHARDQ_FANOUT_IN_FLIGHT": "32"}).fanout_in_flight == 32


def test_every_problem_named_at_once() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"SHARDQ_JOB_TABLE": "t", "SHARDQ_MAX_RECEIVE_COUNT": "five"})
    message = str(info.value)
    for name in ("SHARDQ_TASK_QUEUE_URL", "SHARDQ_RESULTS_QUEUE_URL", "SHARDQ_ARTIFACT_BUCKET"):
        assert f"{name} is not set" in message
    assert "SHARDQ_MAX_RECEIVE_COUNT must be an integer, got 'five'" in message


# Every field at a value other than its default, so a round trip that drops one shows.
EVERY_FIELD = Settings(
    job_table="jobs",
    task_queue_url="https://sqs/tasks.fifo",
    results_queue_url="https://sqs/results",
    artifact_bucket="artifacts",
    event_bus_name="bus",
    job_ttl_days=7,
    max_receive_count=9,
    splitter_function="splitter",
    fanout_in_flight=32,
    data_buckets=("artifacts", "datasets"),
    parked_results_queue_url="https://sqs/parked-results",
    fast_results_queue_url="https://sqs/fast-results",
    scheduling='{"tenants": {"vision": {"weight": 2}}, "default_tenant": null}',
)


def test_every_field_has_an_environment_variable_and_a_stack_output() -> None:
    names = {f.name for f in fields(Settings)}
    assert set(Settings.ENV) == names
    assert set(Settings.OUTPUTS) == names
    defaults = Settings(job_table="t", task_queue_url="q", results_queue_url="r", artifact_bucket="b")
    assert [
        f.name for f in fields(Settings) if getattr(EVERY_FIELD, f.name) == getattr(defaults, f.name)
    ] == []


def test_every_field_round_trips_through_the_environment_and_the_outputs() -> None:
    assert Settings.from_env(EVERY_FIELD.as_env()) == EVERY_FIELD
    assert Settings.from_outputs(EVERY_FIELD.as_outputs()) == EVERY_FIELD
    # the CLI (outputs) and the Lambdas (environment) see the same settings
    assert Settings.from_outputs(EVERY_FIELD.as_outputs()) == Settings.from_env(EVERY_FIELD.as_env())


def test_outputs_of_an_older_stack_fall_back_to_the_defaults() -> None:
    old = {"JobTableName": "t", "TaskQueueUrl": "q", "ResultsQueueUrl": "r", "ArtifactBucketName": "b"}
    s = Settings.from_outputs(old)
    assert (s.job_ttl_days, s.max_receive_count, s.event_bus_name, s.data_buckets) == (90, 5, "default", None)


def test_missing_or_bad_outputs_are_named_with_the_fix() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_outputs({"JobTableName": "t", "JobTtlDays": "ninety"})
    message = str(info.value)
    for key in ("TaskQueueUrl", "ResultsQueueUrl", "ArtifactBucketName"):
        assert f"output {key} is missing; redeploy the stack" in message
    assert "output JobTtlDays must be an integer, got 'ninety'" in message
