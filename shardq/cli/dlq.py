"""``shardq dlq list|show|redrive``: inspect dead letters and move them back.

Two dead-letter queues: ``tasks`` (FIFO; in a deployed stack the DLQ handler consumes it and
records each dead task as a failed shard, so messages wait here only when that handler could
not) and ``results`` (results the aggregator rejected or could not record).

Redrive uses SQS's StartMessageMoveTask where the endpoint supports it; otherwise it
receives, re-sends (FIFO: same message group, a fresh deduplication id, so the queue does
not drop the message as a duplicate of its first send) and deletes from the DLQ only the
messages whose send succeeded. A crash in between can duplicate a message, never lose one;
every consumer is idempotent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from shardq.cli.common import (
    EXIT_OK,
    AwsError,
    CliError,
    add_command,
    aws_errors,
    print_json,
    require_output,
    session_client,
    stack_outputs,
    table,
)

# queue name → (DLQ output, source queue output)
QUEUES = {"tasks": ("TaskDlqUrl", "TaskQueueUrl"), "results": ("ResultsDlqUrl", "ResultsQueueUrl")}
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
PEEK_VISIBILITY_S = 30
REDRIVE_VISIBILITY_S = 120


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


def selected(args: argparse.Namespace) -> list[str]:
    """The queues a command acts on."""
    return [args.queue] if args.queue else list(QUEUES)


def cmd_list(args: argparse.Namespace) -> int:
    """Message counts of the dead-letter queues."""
    outputs = stack_outputs(args)
    sqs = session_client("sqs", args)
    rows = []
    with aws_errors(args):
        for name in selected(args):
            url = require_output(outputs, QUEUES[name][0], args)
            rows.append({"queue": name, "url": url, **counts(sqs, url)})
    if args.json:
        print_json(rows)
    else:
        print(
            table(
                [(r["queue"], r["visible"], r["in_flight"], r["url"]) for r in rows],
                ("QUEUE", "MESSAGES", "IN FLIGHT", "URL"),
            )
        )
        if any(r["visible"] for r in rows):
            print(
                "\nlook at them with `shardq dlq show --queue NAME`; "
                "move them back with `shardq dlq redrive --queue NAME`"
            )
    return EXIT_OK


def peek(sqs: Any, url: str, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` messages, handed back (visibility 0) as soon as they are read."""
    got: list[dict[str, Any]] = []
    try:
        while len(got) < limit:
            msgs = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=min(10, limit - len(got)),
                VisibilityTimeout=PEEK_VISIBILITY_S,
                WaitTimeSeconds=0,
                AttributeNames=["All"],
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not msgs:
                break
            got.extend(msgs)
    finally:
        # Hold them until all are read (a FIFO group hides its later messages meanwhile), then give them back.
        for i in range(0, len(got), 10):
            sqs.change_message_visibility_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(j), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                    for j, m in enumerate(got[i : i + 10])
                ],
            )
    return got


def describe(message: dict[str, Any]) -> dict[str, Any]:
    """A dead letter as data: its id, receive count, and the body (parsed when it is JSON)."""
    attrs = message.get("Attributes", {})
    try:
        body: Any = json.loads(message["Body"])
    except ValueError:
        body = message["Body"]
    return {
        "message_id": message["MessageId"],
        "receive_count": int(attrs.get("ApproximateReceiveCount", 0)),
        "sent_at": int(attrs.get("SentTimestamp", 0)) / 1000 or None,
        "group_id": attrs.get("MessageGroupId"),
        "body": body,
    }


def cmd_show(args: argparse.Namespace) -> int:
    """The first messages of the dead-letter queues, without removing them."""
    outputs = stack_outputs(args)
    sqs = session_client("sqs", args)
    shown: dict[str, list[dict[str, Any]]] = {}
    with aws_errors(args):
        for name in selected(args):
            shown[name] = [
                describe(m) for m in peek(sqs, require_output(outputs, QUEUES[name][0], args), args.max)
            ]
    if args.json:
        print_json(shown if not args.queue else shown[args.queue])
        return EXIT_OK
    for name, items in shown.items():
        print(f"{name} DLQ: {len(items)} message(s) shown")
        rows = []
        for d in items:
            b = d["body"] if isinstance(d["body"], dict) else {}
            sent = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d["sent_at"])) if d["sent_at"] else ""
            what = b.get("task_type", "") if name == "tasks" else b.get("status", "")
            detail = b.get("error") or ("" if b else str(d["body"])[:60])
            rows.append(
                (
                    d["message_id"],
                    b.get("job_id", "?"),
                    b.get("round", ""),
                    b.get("shard_id", ""),
                    what,
                    d["receive_count"],
                    sent,
                    detail,
                )
            )
        if rows:
            print(
                table(
                    rows,
                    (
                        "MESSAGE",
                        "JOB",
                        "ROUND",
                        "SHARD",
                        "TYPE" if name == "tasks" else "STATUS",
                        "RECEIVES",
                        "SENT (UTC)",
                        "DETAIL",
                    ),
                )
            )
        print()
    return EXIT_OK


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


def wait_move_task(sqs: Any, dlq_url: str, report: RedriveReport, timeout: float, out: Any) -> None:
    """Poll ListMessageMoveTasks until the task ends (or ``timeout``)."""
    arn = queue_arn(sqs, dlq_url)
    deadline = time.monotonic() + timeout
    while True:
        tasks = sqs.list_message_move_tasks(SourceArn=arn, MaxResults=1).get("Results", [])
        task = tasks[0] if tasks else {}
        report.moved = int(task.get("ApproximateNumberOfMessagesMoved", 0))
        status = task.get("Status", "UNKNOWN")
        print(
            f"move task {status}: {report.moved}/{task.get('ApproximateNumberOfMessagesToMove', '?')} moved",
            file=out,
        )
        if status in ("COMPLETED", "FAILED", "CANCELLED"):
            if status != "COMPLETED":
                report.errors.append(f"move task {status}: {task.get('FailureReason', '')}")
            return
        if time.monotonic() > deadline:
            report.errors.append("still moving when the wait ended; check with `shardq dlq list`")
            return
        time.sleep(2)


def resend(sqs: Any, dlq_url: str, dest_url: str, report: RedriveReport, limit: int | None = None) -> None:
    """Receive → send → delete, batch by batch; a message leaves the DLQ only after its send succeeded."""
    fifo = dest_url.endswith(".fifo")
    run = uuid.uuid4().hex
    empty = 0
    while limit is None or report.moved < limit:
        want = 10 if limit is None else min(10, limit - report.moved)
        msgs = sqs.receive_message(
            QueueUrl=dlq_url,
            MaxNumberOfMessages=want,
            VisibilityTimeout=REDRIVE_VISIBILITY_S,
            WaitTimeSeconds=0 if empty == 0 else 1,
            AttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not msgs:
            empty += 1
            if empty >= 2:
                return
            continue
        empty = 0
        entries = []
        for i, m in enumerate(msgs):
            entry: dict[str, Any] = {"Id": str(i), "MessageBody": m["Body"]}
            if m.get("MessageAttributes"):
                entry["MessageAttributes"] = m["MessageAttributes"]
            if fifo:
                entry["MessageGroupId"] = m.get("Attributes", {}).get("MessageGroupId") or "redrive"
                # Fresh per redrive run: the first send's id would make the queue drop this one.
                entry["MessageDeduplicationId"] = f"{m['MessageId']}:redrive:{run}"[:128]
            entries.append(entry)
        try:
            resp = sqs.send_message_batch(QueueUrl=dest_url, Entries=entries)
        except Exception:
            _release(sqs, dlq_url, msgs)
            raise
        sent = {s["Id"] for s in resp.get("Successful", [])}
        for f in resp.get("Failed", []):
            report.errors.append(f"{msgs[int(f['Id'])]['MessageId']}: {f.get('Code')}: {f.get('Message')}")
        done = [m for i, m in enumerate(msgs) if str(i) in sent]
        kept = [m for i, m in enumerate(msgs) if str(i) not in sent]
        if done:
            deleted = sqs.delete_message_batch(
                QueueUrl=dlq_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
            )
            for f in deleted.get("Failed", []):
                # Sent but still in the DLQ: it will show up again (a duplicate, never a loss).
                report.errors.append(
                    f"sent but not deleted from the DLQ: {f.get('Code')}: {f.get('Message')}"
                )
        report.moved += len(done)
        if kept:
            report.failed += len(kept)
            _release(sqs, dlq_url, kept)
            return  # stop rather than spin on a message the queue refuses


def _release(sqs: Any, url: str, msgs: list[dict[str, Any]]) -> None:
    if msgs:
        sqs.change_message_visibility_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for i, m in enumerate(msgs)
            ],
        )


def redrive(
    sqs: Any,
    name: str,
    dlq_url: str,
    dest_url: str,
    *,
    method: str = "auto",
    limit: int | None = None,
    wait_s: float = 300.0,
    out: Any = sys.stderr,
) -> RedriveReport:
    """Move a DLQ's messages back to their queue; see the module docstring for how."""
    before = counts(sqs, dlq_url)
    report = RedriveReport(queue=name, method=method, before=before["visible"] + before["in_flight"])
    handle = None
    if method in ("auto", "move-task") and limit is None:
        handle = start_move_task(sqs, dlq_url, dest_url)
        if handle is None and method == "move-task":
            raise CliError(
                "this endpoint does not support StartMessageMoveTask; use --method resend (or auto)"
            )
    if handle is not None:
        report.method, report.task_handle = "move-task", handle
        wait_move_task(sqs, dlq_url, report, wait_s, out)
    else:
        report.method = "resend"
        resend(sqs, dlq_url, dest_url, report, limit)
    after = counts(sqs, dlq_url)
    report.after = after["visible"] + after["in_flight"]
    return report


def cmd_redrive(args: argparse.Namespace) -> int:
    """Move dead letters back to their queue."""
    outputs = stack_outputs(args)
    sqs = session_client("sqs", args)
    reports = []
    with aws_errors(args):
        for name in selected(args):
            dlq_key, dest_key = QUEUES[name]
            reports.append(
                redrive(
                    sqs,
                    name,
                    require_output(outputs, dlq_key, args),
                    require_output(outputs, dest_key, args),
                    method=args.method,
                    limit=args.max,
                    wait_s=args.wait_seconds,
                )
            )
    if args.json:
        print_json([r.to_dict() for r in reports])
    else:
        for r in reports:
            print(
                f"{r.queue}: moved {r.moved} of {r.before} message(s) back ({r.method}); "
                f"{r.after} left in the DLQ"
            )
            for e in r.errors[:10]:
                print(f"  {e}")
        if any(r.queue == "tasks" and r.moved for r in reports):
            print(
                "note: a task the DLQ handler already recorded as failed is re-run only by "
                "`shardq retry JOB`; a redriven copy's result counts as a duplicate"
            )
    if any(r.failed or r.errors for r in reports):
        raise AwsError(
            "some messages could not be moved (listed above); they are still in the DLQ: run redrive again"
        )
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``dlq list|show|redrive``."""
    dlq = sub.add_parser(
        "dlq",
        help="inspect dead letters and move them back",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = dlq.add_subparsers(dest="dlq_command", required=True, metavar="VERB")
    for verb, help_text, example, func in (
        ("list", "message counts of the task and results DLQs", "  shardq dlq list", cmd_list),
        (
            "show",
            "the first dead letters, left in place",
            "  shardq dlq show --queue results --max 5",
            cmd_show,
        ),
        (
            "redrive",
            "move dead letters back to their queue, none lost",
            "  shardq dlq redrive --queue results",
            cmd_redrive,
        ),
    ):
        p = add_command(verbs, verb, help=help_text, example=example)
        p.add_argument("--queue", choices=tuple(QUEUES), help="one DLQ (default: both)")
        p.add_argument("--json", action="store_true", help="JSON for scripts")
        if verb == "show":
            p.add_argument("--max", type=int, default=10, help="messages to show per queue (default 10)")
        if verb == "redrive":
            p.add_argument("--max", type=int, default=None, help="move at most this many (uses resend)")
            p.add_argument(
                "--method",
                choices=("auto", "move-task", "resend"),
                default="auto",
                help="auto: StartMessageMoveTask where supported, else receive/resend/delete",
            )
            p.add_argument("--wait-seconds", type=float, default=300.0, help="how long to follow a move task")
        p.set_defaults(func=func)
