"""The world the model-based test drives: real queues, table and bucket, the real engine and
handlers, and a worker stand-in that the test's rules move one step at a time.

Nothing here is a mock of the behaviour under test. The task and results queues are real
(local cloud) SQS queues, the job table is a real DynamoDB table, the aggregator and the DLQ
handler are the real Lambda handlers (``lambdas.aggregator.aggregate``,
``lambdas.dlq_handler.handle_dead_tasks``) over the real ``Engine``. Two things are compressed
in time, never changed in kind:

* **SQS's delay of a round's deadline tick.** ``TickDelay`` takes the tick the engine arms and
  holds it until the model's clock reaches its delivery time, then puts the same body on the
  real results queue (what SQS does with ``DelaySeconds``). The engine's clock is
  ``ModelClock``: wall time plus the virtual seconds the model let pass.
* **Visibility timeouts.** A record the handler failed, a batch whose invocation died, a task
  whose worker crashed: each is handed back with visibility 0 (what the timeout does, later).
  SQS itself counts the receives and dead-letters a message after ``maxReceiveCount``.

Workers are not processes here: ``World.take`` receives real tasks from the real task queue
and the rules post ``ShardResult`` messages for them (ok, failed, diverged, duplicate, late,
malformed), delete them, or let them die, as ``shardq worker`` would.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

from shardq.core.contracts import ShardTask
from shardq.core.engine import Engine
from shardq.core.settings import Settings
from shardq.core.spend import BUDGET_DROP, Dropped
from shardq.local.resources import dlq_urls, provision
from tests.chaos import model_windows
from tests.chaos.harness import Pump
from tests.helpers import LambdaContext, count_messages, queue_arn, result_for, sqs_event

# The workers' price: a 0.5 s train task costs 5,000 micro-USD (the cost invariant, model_invariants).
PRICE_PER_HOUR = 36.0

# A task a worker holds stays invisible this long (the model hands it back explicitly).
HOLD_S = 900
# The Lambda context's remaining time: far beyond any virtual time a run lets pass, so the
# engine's deadline checks (wall clock + remaining) never cut a step short.
CONTEXT = LambdaContext(remaining_ms=7 * 24 * 3600 * 1000)
# DynamoDB's item size limit (attribute names + values, DynamoDB's sizing rules).
ITEM_LIMIT = 400 * 1024


class ModelClock:
    """Wall time plus the seconds the model let pass (``advance``): the engine's clock."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance_to(self, at: float) -> None:
        """Let time pass until ``at`` (never backwards)."""
        self.offset += max(0.0, at - self())


@dataclass
class HeldTick:
    """A tick the engine armed, waiting for the clock to reach ``at`` (its SQS delay)."""

    at: float
    url: str
    body: str

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)["shardq_tick"]
        return data


class TickDelay:
    """The ticker's SQS client: holds each delayed message until the model's clock reaches it."""

    def __init__(self, real: Any, clock: ModelClock) -> None:
        self.real = real
        self.clock = clock
        self.held: list[HeldTick] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def send_message(
        self, QueueUrl: str, MessageBody: str, DelaySeconds: int = 0, **kw: Any
    ) -> dict[str, Any]:
        self.held.append(HeldTick(self.clock() + DelaySeconds, QueueUrl, MessageBody))
        return {"MessageId": f"held-{len(self.held)}"}

    def deliver_next(self) -> HeldTick | None:
        """Let time pass to the earliest held tick and put it on its queue (SQS's delay ends)."""
        if not self.held:
            return None
        tick = min(self.held, key=lambda t: t.at)
        self.held.remove(tick)
        self.clock.advance_to(tick.at)
        self.real.send_message(QueueUrl=tick.url, MessageBody=tick.body)
        return tick

    def pending(self, job_id: str) -> list[HeldTick]:
        """Ticks of ``job_id`` still held."""
        return [t for t in self.held if t.data["job_id"] == job_id]


@dataclass
class Held:
    """A task a worker received and has not finished with."""

    message: dict[str, Any]
    task: ShardTask


class ModelPump(Pump):
    """The two event source mappings, with every visibility timeout compressed to zero."""

    def invoke(self, url: str, msgs: list[dict[str, Any]], handler: Any) -> None:
        self.invocations += 1
        try:
            response = handler(sqs_event(msgs, self.arns[url]), CONTEXT)
        except Exception:  # the invocation failed as a whole: the batch comes back
            self.crashes += 1
            release(self.sqs, url, msgs)
            return
        failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
        self.delete(url, [m for m in msgs if m["MessageId"] not in failed])
        release(self.sqs, url, [m for m in msgs if m["MessageId"] in failed])


def release(sqs: Any, url: str, msgs: list[dict[str, Any]]) -> None:
    """Hand messages back at once (their visibility timeout, compressed)."""
    for i in range(0, len(msgs), 10):
        sqs.change_message_visibility_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(j), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for j, m in enumerate(msgs[i : i + 10])
            ],
        )


@dataclass
class World:
    """One example's resources, engine, event sources, held tasks and held ticks."""

    clients: dict[str, Any]
    settings: Settings
    engine: Engine
    clock: ModelClock
    ticks: TickDelay
    pump: ModelPump
    dlqs: dict[str, str]
    held: list[Held] = field(default_factory=list)
    # Every result body posted, for replays (a duplicate delivery, or a straggler arriving late).
    posted: list[str] = field(default_factory=list)
    # Bodies posted that no aggregator may accept (they must end in the results DLQ).
    rejected: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, clients: dict[str, Any], *, max_receive_count: int = 2) -> World:
        """Fresh resources and an engine over them (the model's clock, the held ticks)."""
        from lambdas import aggregator, dlq_handler

        sqs = clients["sqs"]
        settings = provision(sqs, clients["dynamodb"], clients["s3"], max_receive_count=max_receive_count)
        # Windows, tenants and priorities (issue #25): tests/chaos/model_windows.py.
        settings = replace(settings, scheduling=json.dumps(model_windows.SCHEDULING))
        clock = ModelClock()
        engine = Engine(
            settings=settings,
            ddb=clients["dynamodb"],
            sqs=sqs,
            s3=clients["s3"],
            events=clients["events"],
            clock=clock,
        )
        # The lane depth from the counted results, not the wall clock: tests/chaos/model_windows.py.
        engine.admission.pace = model_windows.ModelPace()
        ticks = TickDelay(sqs, clock)
        engine.ticker.sqs = ticks  # the advancer shares this ticker
        pump = ModelPump(sqs, settings, aggregator.aggregate, dlq_handler.handle_dead_tasks)
        return cls(clients, settings, engine, clock, ticks, pump, dlq_urls(sqs, settings))

    @property
    def sqs(self) -> Any:
        return self.clients["sqs"]

    # -- workers ------------------------------------------------------------------------------

    def take(self, limit: int) -> list[Held]:
        """Receive up to ``limit`` tasks, as workers polling the task queue do."""
        got = self.sqs.receive_message(
            QueueUrl=self.settings.task_queue_url,
            MaxNumberOfMessages=min(10, limit),
            VisibilityTimeout=HOLD_S,
            AttributeNames=["All"],
        ).get("Messages", [])
        new = [Held(m, ShardTask.from_json(m["Body"])) for m in got]
        self.held.extend(new)
        return new

    def finish(self, held: Held, bodies: list[str]) -> None:
        """Post ``bodies`` to the results queue, then delete the task (a worker's last two steps)."""
        for body in bodies:
            self.sqs.send_message(QueueUrl=self.settings.results_queue_url, MessageBody=body)
            self.posted.append(body)
        self.sqs.delete_message(
            QueueUrl=self.settings.task_queue_url, ReceiptHandle=held.message["ReceiptHandle"]
        )
        self.held.remove(held)

    def drop_reason(self, task: ShardTask) -> str | None:
        """Why ``shardq worker`` would drop the task unrun (``shardq.worker.drops.drop_reason``'s rules)."""
        job = self.engine.store.state_of(task.job_id)
        if job is None:
            return None
        if job.terminal or job.cancelling:
            return job.status
        if job.budget_spent:
            return BUDGET_DROP
        closed = job.round > task.round or (job.closed_round is not None and job.closed_round >= task.round)
        if task.strategy.get("name") == "fedbuff":
            return None  # an update's "round" is its client's update number: no round closes it
        if task.task_type == "train" and task.kind == "data_parallel" and closed:
            return "round closed"
        return None

    def drop_bodies(self, task: ShardTask, reason: str | None) -> list[str]:
        """What a worker posts for a task it drops for ``reason``: the drop notice of a
        budget-stopped job's task (``spend.Dropped``, as ``shardq worker`` posts it), else nothing."""
        if reason != BUDGET_DROP:
            return []
        return [Dropped.of(task.job_id, task.round, task.shard_id, task.task_type).body()]

    def crash(self, held: Held) -> None:
        """The worker died holding the task: it comes back (its receive count grows)."""
        release(self.sqs, self.settings.task_queue_url, [held.message])
        self.held.remove(held)

    def poison(self, held: Held, max_receive_count: int) -> bool:
        """Crash on the task until SQS dead-letters it; True once it left the task queue."""
        target = held.message["MessageId"]
        self.crash(held)
        for _ in range(max_receive_count + 2):
            got = self.take(10)
            mine = [h for h in got if h.message["MessageId"] == target]
            if not mine:
                return True
            self.crash(mine[0])
        return False

    # -- results ------------------------------------------------------------------------------

    def result_body(self, task: ShardTask, outcome: str, value: float | None = None) -> str:
        """The result a worker posts for ``task``: ``ok``, ``failed``, or ``diverged`` (a train
        result whose objective is ``value``, not finite)."""
        # Every result carries its worker's price (issue #25), so the cost invariant has costs to count.
        if outcome == "failed":
            return replace(result_for(task, status="failed"), price_per_hour=PRICE_PER_HOUR).to_json()
        if outcome == "diverged":
            data = replace(result_for(task), price_per_hour=PRICE_PER_HOUR).to_dict()
            data["metrics"] = {"loss": value, "accuracy": 0.0}
            return json.dumps(data)  # NaN and ±Infinity as Python's json writes them
        return replace(result_for(task), price_per_hour=PRICE_PER_HOUR).to_json()

    def quiet(self) -> bool:
        """No task queued, held or dead, no result or tick waiting to be aggregated."""
        if self.held:
            return False
        urls = (self.settings.task_queue_url, self.settings.results_queue_url, self.dlqs["tasks"])
        return not any(count_messages(self.sqs, url) for url in urls)

    def settle(self, rounds: int = 50) -> None:
        """Pump until the results queue and the task DLQ stop yielding records."""
        for _ in range(rounds):
            if not self.pump.step():
                return

    def peek(self, url: str) -> list[dict[str, Any]]:
        """Every message on a queue without a redrive policy (a DLQ), left where it is."""
        out: dict[str, dict[str, Any]] = {}
        for _ in range(20):
            got = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0).get(
                "Messages", []
            )
            fresh = [m for m in got if m["MessageId"] not in out]
            if not fresh and len(out) >= count_messages(self.sqs, url):
                break
            out.update((m["MessageId"], m) for m in got)
        return list(out.values())

    def arn(self, url: str) -> str:
        return queue_arn(self.sqs, url)


# -- DynamoDB item sizes: DynamoDB's rules, defined once in benchmarks/scale_sizes.py -----------


def scan_items(ddb: Any, table: str) -> list[dict[str, Any]]:
    """Every item of the table (consistent reads)."""
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = ddb.scan(**kwargs)
        items.extend(page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
