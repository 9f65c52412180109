"""Stop signals that reach the training loop: SIGTERM, a Spot interruption notice, a lost lease.

A training function reads ``ctx.should_stop`` between steps. When it turns true the function saves
a checkpoint (``ctx.save_checkpoint``) and raises ``Stopped``; the worker then gives the task back
(visibility 0) instead of posting a result, and whichever worker receives it next resumes from that
checkpoint. A function that never looks at the flag still works: it runs on until the grace period
ends and the task is released, resuming from its last checkpoint, if any.

``ctx.should_stop`` turns true on

* **SIGTERM/SIGINT** to the worker (ECS stops a task on a Spot interruption once the agent drains
  the instance, ``ECS_ENABLE_SPOT_INSTANCE_DRAINING``; Batch, Kubernetes and systemd send SIGTERM);
* **a Spot interruption notice**, which ``SpotNotice`` polls from the instance metadata service
  (IMDSv2 ``spot/instance-action``, every 5 s as AWS advises: the notice comes two minutes ahead),
  and optionally a **rebalance recommendation** (``events/recommendations/rebalance``), an earlier
  and less certain warning;
* **a lost lease** (``shardq.worker.lease``): that task alone.

The metadata address is ``SHARDQ_IMDS_ENDPOINT`` (or ``shardq worker --imds-endpoint``), so tests
run a fake one on 127.0.0.1. Off EC2 the first token request fails fast and, in ``auto`` mode, the
poller gives up quietly after ``OFF_EC2_TRIES``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Literal, Protocol

log = logging.getLogger("shardq.worker")

DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
IMDS_ENV = "SHARDQ_IMDS_ENDPOINT"
# AWS advises polling spot/instance-action every 5 seconds.
POLL_S = 5.0
TOKEN_TTL_S = 21600
# IMDS answers in milliseconds on EC2; anything slower is no IMDS at all.
TIMEOUT_S = 1.0
OFF_EC2_TRIES = 3
INSTANCE_ACTION = "/latest/meta-data/spot/instance-action"
REBALANCE = "/latest/meta-data/events/recommendations/rebalance"

SpotMode = Literal["auto", "on", "off"]


class Stopped(BaseException):
    """Raise from a training function once ``ctx.should_stop`` is set (after saving a checkpoint), or
    ``return ctx.stopped()``, which raises it: the worker releases the task to the queue instead of
    posting a result. A ``BaseException``, like ``KeyboardInterrupt``, so a training loop's
    ``except Exception`` cannot swallow it and report a stop as a failure."""


@dataclass
class StopSignal:
    """The worker-wide stop: set once, by a signal handler or the Spot poller; says why."""

    event: threading.Event = field(default_factory=threading.Event)
    reason: str | None = None

    def request(self, reason: str) -> None:
        """Set the stop (the first reason is kept and logged)."""
        if not self.event.is_set():
            self.reason = reason
            log.warning("stop requested: %s; running tasks are asked to checkpoint and return", reason)
        self.event.set()

    def is_set(self) -> bool:
        """True once a stop was requested."""
        return self.event.is_set()


class StopSource(Protocol):
    """Anything ``ctx.should_stop`` can read (the worker's flags, or a child process's pipe to them)."""

    def is_set(self) -> bool:
        """True once the task should stop."""
        ...


@dataclass(frozen=True)
class StopFlags:
    """What ``ctx.should_stop`` reads: the worker-wide stop and the task's own (a lost lease)."""

    events: tuple[threading.Event, ...] = ()

    def is_set(self) -> bool:
        """True when any of the events is set."""
        return any(e.is_set() for e in self.events)


def imds_endpoint(flag: str | None = None) -> str:
    """The metadata address: the flag, else ``SHARDQ_IMDS_ENDPOINT``, else EC2's link-local one.

    Raises ``ValueError`` for anything but an http(s) URL (urllib would also open ``file:``).
    """
    endpoint = (flag or os.environ.get(IMDS_ENV) or DEFAULT_IMDS_ENDPOINT).rstrip("/")
    if not endpoint.startswith(("http://", "https://")):
        raise ValueError(
            f"the instance metadata endpoint must be an http:// URL, got {endpoint!r}: fix --imds-endpoint "
            f"or ${IMDS_ENV}"
        )
    return endpoint


@dataclass
class SpotNotice:
    """Polls IMDSv2 for a Spot interruption notice (and optionally a rebalance recommendation) and
    sets ``stop`` when one appears.

    Parameters
    ----------
    stop:
        The worker's stop.
    endpoint:
        The metadata service's base URL (``imds_endpoint``).
    rebalance:
        Treat a rebalance recommendation as a stop too (an early warning: the instance is at
        elevated risk of interruption, which may never come).
    mode:
        ``auto``: give up quietly when no metadata service answers (not on EC2); ``on``: keep
        trying; ``off``: never start.
    """

    stop: StopSignal
    endpoint: str = DEFAULT_IMDS_ENDPOINT
    rebalance: bool = False
    mode: SpotMode = "auto"
    every_s: float = POLL_S
    _token: str | None = None
    _halt: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> SpotNotice:
        """Start polling in a daemon thread (nothing in ``off`` mode)."""
        if self.mode != "off":
            self._thread = threading.Thread(target=self._run, daemon=True, name="spot-notice")
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop polling."""
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * TIMEOUT_S + 1)

    def check(self) -> str | None:
        """One poll: the stop reason if a notice is up, else None. Raises ``OSError`` when the
        metadata service does not answer."""
        notice = self._get(INSTANCE_ACTION)
        if notice is not None:
            return f"Spot interruption notice ({_describe(notice)})"
        if self.rebalance and (rec := self._get(REBALANCE)) is not None:
            return f"rebalance recommendation ({_describe(rec)})"
        return None

    def _run(self) -> None:
        answered = False
        misses = 0
        while not self._halt.is_set() and not self.stop.is_set():
            try:
                reason = self.check()
                answered, misses = True, 0
            except OSError as exc:
                misses += 1
                if not answered and self.mode == "auto" and misses >= OFF_EC2_TRIES:
                    log.info(
                        "no instance metadata at %s (%s): not polling for Spot notices", self.endpoint, exc
                    )
                    return
                log.debug("instance metadata poll failed: %s", exc)
                reason = None
            if reason is not None:
                self.stop.request(reason)
                return
            self._halt.wait(self.every_s)

    def metadata(self, path: str) -> str | None:
        """GET any metadata path with this poller's session token (``shardq.worker.pricing`` reads
        the instance type so): its body, None on 404; ``OSError`` when no metadata service answers."""
        return self._get(path)

    def _get(self, path: str) -> str | None:
        """GET a metadata path with a session token: its body, or None on 404 (no notice)."""
        for fresh in (False, True):
            token = self._session_token(fresh)
            request = urllib.request.Request(  # noqa: S310 (http(s) only, see imds_endpoint)
                self.endpoint + path, headers={"X-aws-ec2-metadata-token": token}, method="GET"
            )
            try:
                # http(s) only: imds_endpoint refuses any other scheme.
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:  # noqa: S310
                    return str(resp.read().decode())
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                if exc.code == 401 and not fresh:  # the token expired: get a new one, once
                    continue
                raise OSError(f"IMDS {path}: HTTP {exc.code}") from exc
        return None

    def _session_token(self, fresh: bool) -> str:
        if self._token is None or fresh:
            request = urllib.request.Request(  # noqa: S310 (http(s) only, see imds_endpoint)
                self.endpoint + "/latest/api/token",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)},
                method="PUT",
            )
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:  # noqa: S310
                self._token = resp.read().decode()
        return self._token


def _describe(body: str) -> str:
    """``terminate at 2026-…`` from the notice's JSON; the raw text when it is not JSON."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200]
    if isinstance(data, dict) and "action" in data:
        return f"{data['action']} at {data.get('time', '?')}"
    if isinstance(data, dict) and "noticeTime" in data:
        return f"noticed at {data['noticeTime']}"
    return body[:200]
