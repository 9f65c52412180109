"""Settings come from the environment once, with one error naming every problem."""

from __future__ import annotations

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
