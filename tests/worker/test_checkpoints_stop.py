"""Stop signals for the training loop: the Spot notice poller against a fake IMDSv2 on 127.0.0.1."""

from __future__ import annotations

import socket
import threading

import pytest

from shardq.worker.stop import SpotNotice, StopFlags, StopSignal, imds_endpoint
from tests.worker.fake_imds import FakeImds


def wait_for(event: threading.Event, seconds: float = 10.0) -> bool:
    return event.wait(seconds)


def test_a_spot_interruption_notice_sets_the_stop_with_its_reason() -> None:
    with FakeImds() as imds:
        stop = StopSignal()
        poller = SpotNotice(stop, imds.endpoint, every_s=0.05).start()
        try:
            # GIVEN no notice yet: polls answer 404 and nothing stops
            assert not stop.event.wait(0.3)
            # WHEN EC2 posts the two-minute notice
            imds.interrupt(time="2026-12-07T12:00:00Z")
            # THEN the stop is set, naming it
            assert wait_for(stop.event)
        finally:
            poller.close()
    assert stop.reason == "Spot interruption notice (terminate at 2026-12-07T12:00:00Z)"
    # IMDSv2: a token first, then every GET with it
    assert imds.requests[0][:2] == ("PUT", "/latest/api/token")
    assert ("GET", "/latest/meta-data/spot/instance-action", 404) in imds.requests


def test_a_rebalance_recommendation_stops_only_when_asked_to() -> None:
    with FakeImds() as imds:
        imds.recommend_rebalance()
        ignoring, heeding = StopSignal(), StopSignal()
        pollers = [
            SpotNotice(ignoring, imds.endpoint, every_s=0.05).start(),
            SpotNotice(heeding, imds.endpoint, rebalance=True, every_s=0.05).start(),
        ]
        try:
            assert wait_for(heeding.event)
            assert not ignoring.event.wait(0.3)
        finally:
            for p in pollers:
                p.close()
    assert heeding.reason is not None and heeding.reason.startswith("rebalance recommendation")


def test_an_expired_session_token_is_renewed() -> None:
    with FakeImds() as imds:
        notice = SpotNotice(StopSignal(), imds.endpoint)
        assert notice.check() is None
        imds.expire_token()
        imds.interrupt()
        assert notice.check() == "Spot interruption notice (terminate at 2026-12-07T12:00:00Z)"
    assert [r[0] for r in imds.requests].count("PUT") == 2


def test_off_ec2_the_poller_gives_up_quietly_in_auto_mode() -> None:
    # GIVEN an address where nothing listens (a port just freed)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stop = StopSignal()
    poller = SpotNotice(stop, f"http://127.0.0.1:{port}", every_s=0.01).start()
    assert poller._thread is not None
    poller._thread.join(timeout=10)
    assert not poller._thread.is_alive() and not stop.is_set()
    assert SpotNotice(stop, mode="off").start()._thread is None


def test_the_endpoint_comes_from_the_flag_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHARDQ_IMDS_ENDPOINT", raising=False)
    assert imds_endpoint() == "http://169.254.169.254"
    monkeypatch.setenv("SHARDQ_IMDS_ENDPOINT", "http://127.0.0.1:9/")
    assert imds_endpoint() == "http://127.0.0.1:9"
    assert imds_endpoint("http://[fd00:ec2::254]") == "http://[fd00:ec2::254]"


def test_should_stop_reads_every_event_it_is_given() -> None:
    worker_wide, lease_lost = threading.Event(), threading.Event()
    flags = StopFlags((worker_wide, lease_lost))
    assert not flags.is_set()
    lease_lost.set()
    assert flags.is_set()
