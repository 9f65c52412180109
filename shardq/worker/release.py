"""Handing a received task back to the queue, and why a graceful hand-back is not a receive.

SQS counts every receive toward the queue's ``maxReceiveCount`` (5): the fifth receive of a task
that fails is its last, and then the redrive policy moves it to the DLQ. That is right for a task
that crashes its workers (SIGKILL, an OOM kill), and wrong for one whose workers were merely taken
back: under a Spot storm a task interrupted five times would be dead-lettered although it failed
nothing. So the two ways of giving a task back differ:

* **a graceful release** (SIGTERM, a Spot notice, a shutdown's grace running out, a task received
  just as the worker stops) **re-sends** the task as a new message — the same body with
  ``releases`` one higher, the same ``MessageGroupId``, and a fresh ``MessageDeduplicationId``
  (the received one plus ``:rel{n}``: the splitter's explicit ``job:round:shard:type`` would
  otherwise drop the re-send within SQS's 5-minute deduplication window) — and only then deletes
  the received one. Send before delete: a crash between the two leaves a duplicate task, which is
  harmless (the aggregator records each shard once), never a lost one. The new message starts at
  receive count 0, so the release costs no receive. Up to ``MAX_RELEASES``: a task released that
  often is handed back the plain way, so a task that can never finish still ends (in the DLQ);
* **a plain release** (``ChangeMessageVisibility`` to 0) for a failed attempt, a worker that cannot
  work (a fatal AWS error), or when the re-send is impossible (no group id, a malformed body, the
  send failed): it counts, as it should.

A lost lease (heartbeats failing for longer than the lease) hands nothing back: the visibility has
run out and another worker may hold the task, so a re-send could start a second copy; the task
returns through its expired lease and that receive counts, like a crash.

Cost: a graceful release is one SendMessage and one DeleteMessage (was one ChangeMessageVisibility).
Workers need ``sqs:SendMessage`` on the task queue for it (``stacks/components/worker_access.py``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import replace
from typing import Any

from shardq.core.contracts import ShardTask, ValidationError
from shardq.worker.lease import Lease

log = logging.getLogger("shardq.worker")

# Graceful releases a task may have; past them it is handed back the plain way (counted).
MAX_RELEASES = 50
# The message system attributes a receive asks for: the count, and what a re-send keeps.
RECEIVE_ATTRIBUTES = ["ApproximateReceiveCount", "MessageGroupId", "MessageDeduplicationId"]
# SQS's limit on a MessageDeduplicationId.
DEDUP_ID_MAX = 128
_RELEASE_SUFFIX = re.compile(r":rel\d+$")


def release_dedup_id(received: str, releases: int) -> str:
    """The deduplication id of a task's ``releases``-th re-send: the original id plus ``:rel{n}``.

    The original is the received id without an earlier ``:rel{m}``, so every re-send of a task is
    named after the splitter's id; an id past SQS's 128 characters becomes its SHA-256.
    """
    dedup = f"{_RELEASE_SUFFIX.sub('', received)}:rel{releases}"
    return dedup if len(dedup) <= DEDUP_ID_MAX else hashlib.sha256(dedup.encode()).hexdigest()


class TaskRelease:
    """The hand-back half of a worker (a mixin of ``shardq.worker.runtime.Worker``)."""

    sqs: Any
    task_queue_url: str
    current: Lease | None

    def release_current(self) -> bool:
        """Give the running task back to the queue now (shutdown). True when there was one."""
        lease = self.current
        if lease is None or lease.done.is_set():
            return False
        lease.abandoned.set()
        self._hand_back(lease)
        return True

    def _release(self, receipt: str) -> None:
        """The plain release: visible again at once; the next receive counts toward the DLQ."""
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.task_queue_url, ReceiptHandle=receipt, VisibilityTimeout=0
            )
        except Exception:
            log.warning("could not release a task; it returns after its visibility timeout", exc_info=True)

    def _hand_back(self, lease: Lease) -> None:
        """The graceful release (module docstring): re-send, then delete; else the plain release.

        Once per lease: a shutdown's ``release_current`` and the training function's own stop may
        both ask, and a second re-send would be a second copy of the task.
        """
        if not lease.claim_release():
            return
        resend = self._resend_of(lease)
        if resend is None:
            self._release(lease.receipt)
            return
        try:
            self.sqs.send_message(QueueUrl=self.task_queue_url, **resend)
        except Exception:
            log.warning("could not re-send a released task; releasing it the counted way", exc_info=True)
            self._release(lease.receipt)
            return
        try:
            self.sqs.delete_message(QueueUrl=self.task_queue_url, ReceiptHandle=lease.receipt)
        except Exception:
            # The re-send is in the queue: the original comes back after its lease, a duplicate
            # the aggregator records once.
            log.warning("re-sent a released task but could not delete the original", exc_info=True)

    @staticmethod
    def _resend_of(lease: Lease) -> dict[str, str] | None:
        """The SendMessage arguments of the task's re-send, or None when it must be released plainly."""
        attributes = lease.message.get("Attributes", {})
        group, dedup = attributes.get("MessageGroupId"), attributes.get("MessageDeduplicationId")
        if not group or not dedup:
            return None  # not a FIFO message as the splitter sends them
        try:
            task = ShardTask.from_json(lease.message["Body"])
        except (ValidationError, KeyError):
            return None  # malformed: the redrive policy takes it to the DLQ
        if task.releases >= MAX_RELEASES:
            log.warning(
                "task %s was released %d times (the most a task may be without counting); this "
                "release counts toward the queue's maxReceiveCount",
                task.key,
                task.releases,
                extra={"job_id": task.job_id, "round": task.round, "shard_id": task.shard_id},
            )
            return None
        n = task.releases + 1
        return {
            "MessageBody": replace(task, releases=n).to_json(),
            "MessageGroupId": group,
            "MessageDeduplicationId": release_dedup_id(dedup, n),
        }
