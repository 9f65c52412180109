"""Redrive: move a dead-letter queue's messages back to their source queue, none lost.

SQS's StartMessageMoveTask does it server-side where the endpoint has it. Where it does not
(the local cloud, ministack, answers InvalidAction), ``resend`` does it by hand, one received
batch at a time:

1. receive up to 10 messages from the DLQ (hidden for ``REDRIVE_VISIBILITY_S``);
2. send them to the source queue through ``shardq.core.fanout.FanOut``, which retries the
   entries a successful call reports failed, with backoff (a call that fails as a whole —
   throttling, 5xx — is retried by the client's botocore retry mode) — on a FIFO queue in the
   same message group, with a fresh deduplication id, so the queue does not drop the copy as a
   duplicate of the message's first send;
3. delete from the DLQ only the messages whose send succeeded; the others are handed back
   (visibility 0) at once.

A crash between 2 and 3 leaves a message in both queues (a duplicate, which every shardq
consumer absorbs), never in neither.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shardq.core.fanout import FanOut, FanOutError, Message

# Error codes of endpoints without the message-move API (ministack answers InvalidAction).
UNSUPPORTED_CODES = frozenset(
    {
        "InvalidAction",
        "UnsupportedOperation",
        "UnknownOperation",
        "UnknownOperationException",
        "NotImplemented",
    }
)
# Long enough for FanOut's retries (≈ 20 s of backoff at worst) before the message reappears.
REDRIVE_VISIBILITY_S = 120
RECEIVE_BATCH = 10
MOVE_TASK_POLL_S = 2.0


class MoveTaskUnsupported(RuntimeError):
    """The endpoint has no StartMessageMoveTask."""


@dataclass
class RedriveReport:
    """What a redrive moved, how, and what it could not."""

    queue: str
    method: str
    before: int
    moved: int = 0
    failed: int = 0
    after: int | None = None
    task_handle: str | None = None
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class AttributedMessage(Message):
    """A message for the fan-out that carries message attributes (a dead letter's copy, a parked result)."""

    attributes: Mapping[str, Any] | None = None

    def entry(self, entry_id: str) -> dict[str, Any]:
        """The SendMessageBatch entry, with the original's message attributes."""
        out = super().entry(entry_id)
        if self.attributes:
            out["MessageAttributes"] = dict(self.attributes)
        return out


def counts(sqs: Any, url: str) -> dict[str, int]:
    """Approximate visible, in-flight and delayed messages of a queue."""
    attrs = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return {
        "visible": int(attrs.get("ApproximateNumberOfMessages", 0)),
        "in_flight": int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
        "delayed": int(attrs.get("ApproximateNumberOfMessagesDelayed", 0)),
    }


def queue_arn(sqs: Any, url: str) -> str:
    """A queue's ARN."""
    return str(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])


def start_move_task(sqs: Any, dlq_url: str, dest_url: str) -> str | None:
    """StartMessageMoveTask from the DLQ to the queue; None when the endpoint lacks the API."""
    from botocore.exceptions import ClientError

    try:
        resp = sqs.start_message_move_task(
            SourceArn=queue_arn(sqs, dlq_url), DestinationArn=queue_arn(sqs, dest_url)
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in UNSUPPORTED_CODES:
            return None
        raise
    return str(resp["TaskHandle"])


def wait_move_task(
    sqs: Any,
    dlq_url: str,
    report: RedriveReport,
    timeout: float,
    progress: Callable[[str], None] = lambda line: None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Poll ListMessageMoveTasks until the task ends (or ``timeout``), updating ``report``."""
    arn = queue_arn(sqs, dlq_url)
    deadline = time.monotonic() + timeout
    while True:
        tasks = sqs.list_message_move_tasks(SourceArn=arn, MaxResults=1).get("Results", [])
        task = tasks[0] if tasks else {}
        report.moved = int(task.get("ApproximateNumberOfMessagesMoved", 0))
        status = task.get("Status", "UNKNOWN")
        progress(
            f"move task {status}: {report.moved}/{task.get('ApproximateNumberOfMessagesToMove', '?')} moved"
        )
        if status in ("COMPLETED", "FAILED", "CANCELLED"):
            if status != "COMPLETED":
                report.errors.append(f"move task {status}: {task.get('FailureReason', '')}")
            return
        if time.monotonic() > deadline:
            report.errors.append("still moving when the wait ended; check with `shardq dlq list`")
            return
        sleep(MOVE_TASK_POLL_S)


def copy_of(message: dict[str, Any], *, fifo: bool, run: str) -> Message:
    """The message to send back: same body, attributes and group, a deduplication id fresh per run."""
    group = dedup = None
    if fifo:
        group = message.get("Attributes", {}).get("MessageGroupId") or "redrive"
        # Fresh per redrive run: the first send's id would make the queue drop this copy.
        dedup = f"{message['MessageId']}:redrive:{run}"[:128]
    return AttributedMessage(
        body=message["Body"], group_id=group, dedup_id=dedup, attributes=message.get("MessageAttributes")
    )


def _receive(sqs: Any, url: str, want: int, wait_s: int) -> list[dict[str, Any]]:
    return list(
        sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=want,
            VisibilityTimeout=REDRIVE_VISIBILITY_S,
            WaitTimeSeconds=wait_s,
            AttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
    )


def _send_back(
    fan: FanOut, msgs: list[dict[str, Any]], fifo: bool, run: str, report: RedriveReport
) -> list[int]:
    """Send one received batch through the fan-out; the indexes of the messages it could not send."""
    copies = [copy_of(m, fifo=fifo, run=run) for m in msgs]
    try:
        fan.send(copies)
    except FanOutError as exc:
        unsent = {id(c) for c in exc.unsent}
        report.errors.append(f"{len(unsent)} message(s) not sent: {exc}")
        return [i for i, c in enumerate(copies) if id(c) in unsent]
    return []


def _delete(sqs: Any, url: str, msgs: list[dict[str, Any]], report: RedriveReport) -> None:
    if not msgs:
        return
    deleted = sqs.delete_message_batch(
        QueueUrl=url,
        Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)],
    )
    for f in deleted.get("Failed", []):
        # Sent but still in the DLQ: it will show up again (a duplicate, never a loss).
        report.errors.append(f"sent but not deleted from the DLQ: {f.get('Code')}: {f.get('Message')}")


def release(sqs: Any, url: str, msgs: list[dict[str, Any]]) -> None:
    """Hand received messages back to their queue at once (visibility 0)."""
    for i in range(0, len(msgs), RECEIVE_BATCH):
        sqs.change_message_visibility_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(j), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for j, m in enumerate(msgs[i : i + RECEIVE_BATCH])
            ],
        )


def resend(
    sqs: Any,
    dlq_url: str,
    dest_url: str,
    report: RedriveReport,
    limit: int | None = None,
    *,
    fan: FanOut | None = None,
) -> None:
    """Receive → send (``FanOut``) → delete, batch by batch; a message leaves the DLQ only once sent.

    Stops when the DLQ answers empty twice, after ``limit`` messages, or at the first batch with a
    message the queue refuses (rather than spin on it); those are handed back and counted in
    ``report.failed``.
    """
    fifo = dest_url.endswith(".fifo")
    fan = fan or FanOut(sqs, dest_url, max_in_flight=1)
    run = uuid.uuid4().hex
    empty = 0
    while limit is None or report.moved < limit:
        want = RECEIVE_BATCH if limit is None else min(RECEIVE_BATCH, limit - report.moved)
        msgs = _receive(sqs, dlq_url, want, 0 if empty == 0 else 1)
        if not msgs:
            empty += 1
            if empty >= 2:
                return
            continue
        empty = 0
        try:
            unsent = set(_send_back(fan, msgs, fifo, run, report))
        except BaseException:
            release(sqs, dlq_url, msgs)
            raise
        done = [m for i, m in enumerate(msgs) if i not in unsent]
        kept = [m for i, m in enumerate(msgs) if i in unsent]
        _delete(sqs, dlq_url, done, report)
        report.moved += len(done)
        if kept:
            report.failed += len(kept)
            release(sqs, dlq_url, kept)
            return


def redrive(
    sqs: Any,
    name: str,
    dlq_url: str,
    dest_url: str,
    *,
    method: str = "auto",
    limit: int | None = None,
    wait_s: float = 300.0,
    progress: Callable[[str], None] = lambda line: None,
) -> RedriveReport:
    """Move a DLQ's messages back to their queue.

    Parameters
    ----------
    sqs:
        A boto3 SQS client.
    name:
        The DLQ's name in the report (``tasks``, ``results``).
    dlq_url, dest_url:
        The dead-letter queue and the queue its messages go back to.
    method:
        ``auto`` (StartMessageMoveTask where supported, else ``resend``), ``move-task`` (raises
        ``MoveTaskUnsupported`` where the endpoint lacks it) or ``resend``.
    limit:
        Move at most this many (always by ``resend``: a move task cannot be limited).
    wait_s:
        How long to follow a move task.
    progress:
        Called with a line per move-task poll.
    """
    before = counts(sqs, dlq_url)
    report = RedriveReport(queue=name, method=method, before=before["visible"] + before["in_flight"])
    handle = None
    if method in ("auto", "move-task") and limit is None:
        handle = start_move_task(sqs, dlq_url, dest_url)
        if handle is None and method == "move-task":
            raise MoveTaskUnsupported(
                "this endpoint does not support StartMessageMoveTask; use --method resend (or auto)"
            )
    if handle is not None:
        report.method, report.task_handle = "move-task", handle
        wait_move_task(sqs, dlq_url, report, wait_s, progress)
    else:
        report.method = "resend"
        resend(sqs, dlq_url, dest_url, report, limit)
    after = counts(sqs, dlq_url)
    report.after = after["visible"] + after["in_flight"]
    return report
