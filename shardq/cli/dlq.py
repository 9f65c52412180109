"""``shardq dlq list|show|redrive``: inspect dead letters and move them back.

Two dead-letter queues: ``tasks`` (FIFO; in a deployed stack the DLQ handler consumes it and
records each dead task as a failed shard, so messages wait here only when that handler could
not) and ``results`` (results the aggregator could not record; the results DLQ handler records
them, or a rejected one as its shard's failure, so what waits here names no planned task).
``show --queue results`` says why each one was not recorded: it parses the body again and
looks its job up (``shardq.core.verdicts.explain``). A dead result no job can ever record (it
names no planned task) does not wait in the DLQ: the results DLQ handler parks it at once, with
the reason, in the parked-results queue (``shardq.core.parking``); ``list``, ``show`` and
``redrive`` of ``results`` cover that queue too, so ``redrive`` gives parked results another try
(after you created or fixed the job they name, say).

Redrive uses SQS's StartMessageMoveTask where the endpoint supports it; otherwise it
receives, re-sends through the core fan-out (FIFO: same message group, a fresh deduplication
id, so the queue does not drop the message as a duplicate of its first send) and deletes from
the DLQ only the messages whose send succeeded. A crash in between can duplicate a message,
never lose one; every consumer is idempotent. The logic lives in ``shardq.core.redrive``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from shardq.cli.common import (
    EXIT_OK,
    AwsError,
    CliError,
    add_command,
    aws_errors,
    engine_for,
    print_json,
    require_output,
    session_client,
    stack_outputs,
    table,
)
from shardq.core.parking import job_problem, reason_of
from shardq.core.redrive import MoveTaskUnsupported, RedriveReport, counts, redrive, release
from shardq.core.verdicts import explain

# queue name → (DLQ output, source queue output)
QUEUES = {"tasks": ("TaskDlqUrl", "TaskQueueUrl"), "results": ("ResultsDlqUrl", "ResultsQueueUrl")}
# Dead results no job can record, parked with the reason (a stack deployed before it lacks the output).
PARKED_OUTPUT = "ParkedResultsQueueUrl"
PARKED = "results (parked)"
PEEK_VISIBILITY_S = 30


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
            if name == "results" and outputs.get(PARKED_OUTPUT):
                parked = outputs[PARKED_OUTPUT]
                rows.append({"queue": PARKED, "url": parked, **counts(sqs, parked)})
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
        release(sqs, url, got)
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
            messages = peek(sqs, require_output(outputs, QUEUES[name][0], args), args.max)
            shown[name] = [describe(m) for m in messages]
            if name != "results":
                continue
            if messages:
                # Why each dead result was not recorded: its body parsed again, its job looked up.
                problem = job_problem(engine_for(args, outputs).store)
                for d, m in zip(shown[name], messages, strict=True):
                    d.update(held_in="dlq", reason=explain(m["Body"], problem))
            if outputs.get(PARKED_OUTPUT):
                # Parked by the results DLQ handler: the reason it found travels with the message.
                for m in peek(sqs, outputs[PARKED_OUTPUT], args.max):
                    shown[name].append({**describe(m), "held_in": "parked", "reason": reason_of(m) or ""})
    if args.json:
        print_json(shown if not args.queue else shown[args.queue])
        return EXIT_OK
    for name, items in shown.items():
        parked = sum(1 for d in items if d.get("held_in") == "parked")
        held = f" ({len(items) - parked} in the DLQ, {parked} parked)" if name == "results" else ""
        print(f"{name} DLQ: {len(items)} message(s) shown{held}")
        rows = []
        for d in items:
            b = d["body"] if isinstance(d["body"], dict) else {}
            sent = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d["sent_at"])) if d["sent_at"] else ""
            what = b.get("task_type", "") if name == "tasks" else b.get("status", "")
            detail = d.get("reason") or b.get("error") or ("" if b else str(d["body"])[:60])
            rows.append(
                (
                    d["message_id"] + (" (parked)" if d.get("held_in") == "parked" else ""),
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
                        "DETAIL" if name == "tasks" else "WHY NOT RECORDED",
                    ),
                )
            )
        print()
    return EXIT_OK


def cmd_redrive(args: argparse.Namespace) -> int:
    """Move dead letters back to their queue."""
    outputs = stack_outputs(args)
    sqs = session_client("sqs", args)
    reports = []
    with aws_errors(args):
        for name in selected(args):
            dlq_key, dest_key = QUEUES[name]
            try:
                report = redrive(
                    sqs,
                    name,
                    require_output(outputs, dlq_key, args),
                    require_output(outputs, dest_key, args),
                    method=args.method,
                    limit=args.max,
                    wait_s=args.wait_seconds,
                    progress=lambda line: print(line, file=sys.stderr),
                )
            except MoveTaskUnsupported as exc:
                raise CliError(str(exc)) from None
            reports.append(report)
            if name == "results" and outputs.get(PARKED_OUTPUT):
                dest = require_output(outputs, dest_key, args)
                reports.append(unpark(sqs, outputs[PARKED_OUTPUT], dest, args))
    if args.json:
        print_json([r.to_dict() for r in reports])
    else:
        for r in reports:
            print(
                f"{r.queue}: moved {r.moved} of {r.before} message(s) back ({r.method}); "
                f"{r.after} left {'parked' if r.queue == PARKED else 'in the DLQ'}"
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


def unpark(sqs: Any, parked_url: str, results_url: str, args: argparse.Namespace) -> RedriveReport:
    """Parked results back to the results queue for another try (a job fixed since, say).

    Always by receive/resend/delete: StartMessageMoveTask moves only from a queue that is some
    queue's DLQ, and the parked queue is not one. One that still names no planned task comes back
    to the parked queue with its reason (through the results DLQ)."""
    return redrive(sqs, PARKED, parked_url, results_url, method="resend", limit=args.max)


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
