"""Fan-out against the local endpoint with injected partial failures and throttling: exactly N, no more."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shardq.core.clients import new_client
from shardq.core.fanout import FanOut, FanOutError, Message, batches
from shardq.core.settings import Settings
from shardq.local.cloud import LocalCloud
from tests.helpers import FlakySQS, HttpFaults, receive_all


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


@pytest.fixture
def production_sqs(cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """Builds SQS clients the way shardq does (``new_client``), reaching the local cloud."""
    for key, value in cloud.env().items():
        monkeypatch.setenv(key, value)
    return lambda **kw: new_client("sqs", region="us-east-1", endpoint_url=cloud.endpoint_url, **kw)


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


def test_throttled_calls_are_retried_by_botocore_alone(
    production_sqs: Callable[..., Any], settings: Settings
) -> None:
    # GIVEN the production client with SQS throttling its next two SendMessageBatch calls
    sqs = production_sqs()
    faults = HttpFaults(sqs)
    faults.fail("SendMessageBatch", times=2)
    delays: list[float] = []
    # WHEN the fan-out sends 40 messages, one batch at a time
    stats = FanOut(sqs, settings.task_queue_url, max_in_flight=1, sleep=delays.append).send(messages(40))
    # THEN botocore retried the throttled calls below the fan-out: 4 batches, 4 calls as the
    # fan-out sees them, 6 on the wire, no backoff of the fan-out's own, every message once
    assert faults.injected == {"SendMessageBatch": 2}
    assert faults.calls["SendMessageBatch"] == 6
    assert (stats.sent, stats.api_calls, delays) == (40, 4, [])
    assert len(receive_all(sqs, settings.task_queue_url)) == 40


def test_a_call_failing_past_botocores_retries_fails_at_once_naming_the_unsent(
    production_sqs: Callable[..., Any], settings: Settings
) -> None:
    sqs = production_sqs(max_attempts=2)
    HttpFaults(sqs).fail("SendMessageBatch", times=None)
    with pytest.raises(FanOutError, match="RequestThrottled") as info:
        FanOut(sqs, settings.task_queue_url, sleep=no_sleep).send(messages(5))
    assert len(info.value.unsent) == 5


def test_entries_failing_every_attempt_give_up_and_name_the_unsent(
    settings: Settings, clients: dict[str, Any]
) -> None:
    flaky = FlakySQS(clients["sqs"], drop_every=1)
    fan = FanOut(flaky, settings.task_queue_url, max_attempts=3, sleep=no_sleep)
    with pytest.raises(FanOutError, match="still unsent after 3 attempts") as info:
        fan.send(messages(5))
    assert len(info.value.unsent) == 5


def test_entry_retries_stop_at_the_deadline(settings: Settings, clients: dict[str, Any]) -> None:
    # GIVEN every entry failing, and a deadline already close
    flaky = FlakySQS(clients["sqs"], drop_every=1)
    fan = FanOut(flaky, settings.task_queue_url, max_attempts=50, sleep=no_sleep, clock=lambda: 1000.0)
    # WHEN the fan-out would back off past it, THEN it stops after the first call
    with pytest.raises(FanOutError, match="still unsent after 1 attempts"):
        fan.send(messages(3), deadline=1000.0)
    assert flaky.calls == 1


def test_resending_within_the_dedup_window_adds_nothing(settings: Settings, clients: dict[str, Any]) -> None:
    fan = FanOut(clients["sqs"], settings.task_queue_url)
    fan.send(messages(30))
    fan.send(messages(30))
    assert len(receive_all(clients["sqs"], settings.task_queue_url)) == 30
