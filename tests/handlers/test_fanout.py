"""Fan-out against the local endpoint with injected partial failures and throttling: exactly N, no more."""

from __future__ import annotations

from typing import Any

import pytest

from shardq.core.fanout import FanOut, FanOutError, Message, batches
from shardq.core.settings import Settings
from tests.helpers import FlakySQS, receive_all


def messages(n: int, job: str = "fan") -> list[Message]:
    return [
        Message(
            body=f'{{"job_id":"{job}","shard_id":{i}}}',
            group_id=f"{job}:{i % 7}",
            dedup_id=f"{job}:0:{i}:train",
        )
        for i in range(n)
    ]


def no_sleep(_: float) -> None:
    return None


def test_batches_respect_entry_and_byte_limits() -> None:
    msgs = [Message(body="x" * 60_000) for _ in range(9)] + [Message(body="y")] * 25
    groups = list(batches(msgs, max_bytes=256 * 1024))
    assert all(len(g) <= 10 for g in groups)
    assert all(sum(m.size for m in g) <= 256 * 1024 for g in groups)
    assert [m for g in groups for m in g] == msgs
    assert len(groups[0]) == 4  # 4 × 60 kB fit, a fifth would not


def test_oversized_message_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="claim check"):
        list(batches([Message(body="x" * 300_000)]))


def test_partial_batch_failures_are_retried_to_exactly_n(settings: Settings, clients: dict[str, Any]) -> None:
    flaky = FlakySQS(clients["sqs"], drop_every=3)
    stats = FanOut(flaky, settings.task_queue_url, sleep=no_sleep).send(messages(500))
    assert stats.sent == 500
    assert stats.retried_entries > 0
    got = receive_all(clients["sqs"], settings.task_queue_url)
    assert sorted(m["Body"] for m in got) == sorted(m.body for m in messages(500))


def test_throttling_backs_off_and_completes(settings: Settings, clients: dict[str, Any]) -> None:
    delays: list[float] = []
    flaky = FlakySQS(clients["sqs"], throttle_calls=6)
    stats = FanOut(flaky, settings.task_queue_url, max_in_flight=1, sleep=delays.append).send(messages(40))
    assert stats.throttled_calls == 6
    assert stats.sent == 40
    assert len(delays) == 6
    assert len(receive_all(clients["sqs"], settings.task_queue_url)) == 40


def test_gives_up_after_max_attempts_and_names_the_unsent(
    settings: Settings, clients: dict[str, Any]
) -> None:
    flaky = FlakySQS(clients["sqs"], throttle_calls=10_000)
    fan = FanOut(flaky, settings.task_queue_url, max_attempts=3, sleep=no_sleep)
    with pytest.raises(FanOutError, match="still unsent after 3 attempts") as info:
        fan.send(messages(5))
    assert len(info.value.unsent) == 5


def test_resending_within_the_dedup_window_adds_nothing(settings: Settings, clients: dict[str, Any]) -> None:
    fan = FanOut(clients["sqs"], settings.task_queue_url)
    fan.send(messages(30))
    fan.send(messages(30))
    assert len(receive_all(clients["sqs"], settings.task_queue_url)) == 30
