"""ECS task scale-in protection: a worker training a shard is not stopped by a scale-in.

On Amazon ECS the container agent serves ``$ECS_AGENT_URI/task-protection/v1/state``; a PUT of
``{"ProtectionEnabled": true, "ExpiresInMinutes": N}`` protects the calling task from service
scale-in (and from deployments replacing it) until it is cleared or expires. The worker protects its
task while it holds a shard and clears the protection between shards, so the fleet's scale-in only
ever stops idle workers (see stacks/components/fleet.py and docs/OPERATIONS.md).

Outside ECS (``ECS_AGENT_URI`` unset: a laptop, EC2, Batch) every call is a no-op. Failures of the
endpoint are logged and never fail a task: without protection a scale-in can at worst interrupt a
shard, which SIGTERM handling gives back to the queue.

Several worker slots in one task share one protection: it is enabled when the first slot takes a
shard (and refreshed by every later one) and cleared when the last busy slot finishes.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("shardq.worker")

ENDPOINT_PATH = "/task-protection/v1/state"
# A shard holds its task message for at most SQS's 12-hour visibility ceiling; the protection
# outlives that a little, and expires on its own if the worker dies without clearing it.
DEFAULT_EXPIRES_MINUTES = 13 * 60
MAX_EXPIRES_MINUTES = 2880  # ECS's limit (48 hours)


@dataclass
class TaskProtection:
    """Scale-in protection of the ECS task this worker runs in (a no-op outside ECS).

    Parameters
    ----------
    agent_uri:
        ``ECS_AGENT_URI`` (``None``: not on ECS, every call does nothing).
    expires_minutes:
        How long one protection lasts unless cleared (1..2880).
    timeout_s:
        HTTP timeout of one call to the agent.
    """

    agent_uri: str | None
    expires_minutes: int = DEFAULT_EXPIRES_MINUTES
    timeout_s: float = 5.0
    busy: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.expires_minutes <= MAX_EXPIRES_MINUTES:
            raise ValueError(
                f"expires_minutes={self.expires_minutes}: ECS accepts 1..{MAX_EXPIRES_MINUTES} minutes"
            )

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> TaskProtection:
        """From ``ECS_AGENT_URI`` and ``SHARDQ_TASK_PROTECTION_MINUTES`` (set by the fleet)."""
        env = os.environ if environ is None else environ
        minutes = int(env.get("SHARDQ_TASK_PROTECTION_MINUTES") or DEFAULT_EXPIRES_MINUTES)
        return cls(agent_uri=env.get("ECS_AGENT_URI") or None, expires_minutes=minutes)

    @property
    def enabled(self) -> bool:
        """True on ECS, where the agent endpoint exists."""
        return bool(self.agent_uri)

    def task_started(self) -> None:
        """A slot took a shard: protect the task (refreshing the expiry if already protected)."""
        if not self.enabled:
            return
        with self._lock:
            self.busy += 1
            self.set(True)

    def task_finished(self) -> None:
        """A slot is done with its shard: clear the protection when no slot is busy any more."""
        if not self.enabled:
            return
        with self._lock:
            self.busy = max(0, self.busy - 1)
            if self.busy == 0:
                self.set(False)

    def set(self, enabled: bool) -> bool:
        """PUT the protection state; True when the agent accepted it (False, logged, otherwise)."""
        if not self.agent_uri:
            return False
        body: dict[str, Any] = {"ProtectionEnabled": enabled}
        if enabled:
            body["ExpiresInMinutes"] = self.expires_minutes
        request = urllib.request.Request(  # noqa: S310 - the agent's own http:// endpoint
            self.agent_uri.rstrip("/") + ENDPOINT_PATH,
            data=json.dumps(body).encode(),
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                answer = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:500]
            log.warning("task scale-in protection %s refused: HTTP %s %s", _verb(enabled), err.code, detail)
            return False
        except (OSError, ValueError) as err:
            log.warning("task scale-in protection %s failed: %s", _verb(enabled), err)
            return False
        # The agent answers 200 with {"protection": {...}} or with {"failure"/"error": {...}}.
        if "protection" not in answer:
            problem = answer.get("failure") or answer.get("error") or answer
            log.warning("task scale-in protection %s refused: %s", _verb(enabled), problem)
            return False
        log.debug("task scale-in protection %s", _verb(enabled), extra={"protection": answer["protection"]})
        return True


def _verb(enabled: bool) -> str:
    return "enable" if enabled else "clear"
