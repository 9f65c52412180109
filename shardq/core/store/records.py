"""The typed records the job store hands out: JobRecord, JobState, ResultRecord, Outcome, RecordOutcome."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from shardq.core.contracts import TERMINAL_STATUSES, JobView, ShardResult, TrainingRequest
from shardq.core.fedbuff_params import NAME as FEDBUFF
from shardq.core.planning import participant_count, participants
from shardq.core.store.keys import (
    _COUNTER_RE,
    ENDING_ATTRIBUTE,
    _counter,
    _from_item,
    _result_key,
    _to_item,
    now_iso,
)
from shardq.core.store.spending import BUDGET_STOP_ATTRIBUTE, COST_ATTRIBUTE


class JobNotFound(LookupError):
    """No job record under that id."""


class JobChanged(RuntimeError):
    """A conditional write found the job no longer where the caller saw it."""


# -- typed records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRecord:
    """One job as the table holds it: read-only; the store's named methods change it.

    ``counters`` maps ``(kind, round, phase)`` — kind ``ok``, ``fail`` or ``enq`` — to its count;
    read them through ``ok``, ``failed``, ``enqueued`` and ``done``.
    """

    job_id: str
    kind: str
    status: str
    request_json: str
    request_hash: str
    rounds: int
    task_count: int
    max_failed_shards: int
    created_at: str
    round: int = 0
    phase: str = "train"
    round_started_at: str | None = None
    updated_at: str | None = None
    failed_total: int = 0
    model_uri: str | None = None
    finished_at: str | None = None
    result_uri: str | None = None
    error: str | None = None
    event_pending: bool = False
    expires_at: int | None = None
    retry_generation: int = 0
    # The last round whose training closed (quorum or deadline): its later results are late.
    closed_round: int | None = None
    # When the ranges of the closed round's close were last handed out (their lease).
    ranges_sent_at: float | None = None
    # When an operator asked to cancel the job (``request_cancel``): workers stop taking its tasks
    # and the next ``advance`` ends it CANCELLED (a big map round closes in ranges first).
    cancel_requested_at: str | None = None
    counters: Mapping[tuple[str, int, str], int] = field(default_factory=lambda: MappingProxyType({}))
    # What its counted outcomes cost, in micro-USD, and when its budget stopped new tasks
    # (``{"at", "cost_uusd", "counted"}``): ``shardq.core.spend``.
    cost_micro_usd: int = 0
    budget_stop: Mapping[str, Any] | None = None
    # The window its last top-up was held to (shardq.core.admission); None: sent whole.
    window: int | None = None
    # ``{"status", "error"}`` once it is frozen to end (``JobStore.freeze_ending``): nothing counts.
    ending: Mapping[str, Any] | None = None

    @classmethod
    def new(
        cls, request: TrainingRequest, job_id: str, request_hash: str, *, at: str | None = None
    ) -> JobRecord:
        """The record of a job just submitted: RUNNING, round 0, training. ``at``: when (the
        engine's clock, ``StoreBase.stamp``: round 0's deadline counts from it); else the wall clock."""
        now = at or now_iso()
        return cls(
            job_id=job_id,
            kind=request.kind,
            status="RUNNING",
            request_json=request.to_json(),
            request_hash=request_hash,
            rounds=request.round_count,
            task_count=request.task_count,
            max_failed_shards=request.max_failed_shards,
            created_at=now,
            round_started_at=now,
            model_uri=request.model.get("init_uri"),
        )

    @functools.cached_property
    def request(self) -> TrainingRequest:
        """The request the job was submitted with (parsed once per record)."""
        return TrainingRequest.from_json(self.request_json)

    @property
    def terminal(self) -> bool:
        """True once the job SUCCEEDED, FAILED or was CANCELLED."""
        return self.status in TERMINAL_STATUSES

    def expected(self, round_no: int, phase: str) -> int:
        """Tasks (round, phase) has: its participating shards (or promoted trials) to train, one reduce."""
        if phase != "train":
            return 1
        return self.counters.get(("plan", round_no, phase), participant_count(self.request, round_no))

    def client_slots(self) -> int:
        """A FedBuff job's client task slots: the most client tasks it has out at once,
        ``min(max_parallel, clients)``. Round 0's fan-out sends the first task of that many clients
        (``fan_out``); each recorded update then frees its slot for the client that waited longest
        (``shardq.core.fedbuff``)."""
        return max(1, min(self.request.max_parallel, self.task_count))

    def fan_out(self, round_no: int, phase: str) -> int:
        """Tasks the fan-out of (round, phase) sends from its cursor: every task it expects, except a
        FedBuff job's round 0, one first task per client slot (``client_slots``): its other clients
        get their first tasks as slots free, never from the cursor."""
        strategy = self.request.strategy
        if round_no == 0 and phase == "train" and strategy is not None and strategy.name == FEDBUFF:
            return min(self.expected(0, "train"), self.client_slots())
        return self.expected(round_no, phase)

    def first_wave(self) -> int:
        """How many of round 0's planned clients get their first task from its fan-out's cursor (the
        rest of a FedBuff job's get theirs as client slots free): the fan-out (``fan_out``), or the
        cursor where it went further, as for a job in flight from before client slots, whose
        fan-out sent every client's first task whatever its ``max_parallel``."""
        return max(self.enqueued(0, "train"), self.fan_out(0, "train"))

    def planned(self, round_no: int, phase: str) -> Sequence[int]:
        """The shard ids (round, phase) runs, ascending, when the request decides them (a rung that
        a closed rung decided has a stored plan instead: ``JobStore.planned_tasks``)."""
        return participants(self.request, round_no) if phase == "train" else range(1)

    def has_plan(self, round_no: int) -> bool:
        """True when a closed rung decided round ``round_no``'s trials (``JobStore.round_plan``)."""
        return ("plan", round_no, "train") in self.counters

    def ok(self, round_no: int, phase: str) -> int:
        """Recorded successful outcomes of (round, phase)."""
        return self.counters.get(("ok", round_no, phase), 0)

    def failed(self, round_no: int, phase: str) -> int:
        """Recorded failed outcomes of (round, phase)."""
        return self.counters.get(("fail", round_no, phase), 0)

    def diverged(self, round_no: int, phase: str) -> int:
        """Recorded diverged outcomes of (round, phase): final, neither succeeded nor failed."""
        return self.counters.get(("div", round_no, phase), 0)

    def done(self, round_no: int, phase: str) -> int:
        """Recorded outcomes of (round, phase), successful, diverged or failed."""
        return self.ok(round_no, phase) + self.failed(round_no, phase) + self.diverged(round_no, phase)

    def ranges_done(self, round_no: int) -> int:
        """Ranges of round ``round_no``'s close whose digest is stored (``JobStore.put_close_part``)."""
        return self.counters.get(("part", round_no, "train"), 0)

    def enqueued(self, round_no: int, phase: str) -> int:
        """The enqueue cursor of (round, phase): tasks sent so far."""
        return self.counters.get(("enq", round_no, phase), 0)

    def view(self) -> JobView:
        """The people-facing view (``shardq status``, the splitter's answer)."""
        return JobView(
            job_id=self.job_id,
            status=self.status,
            kind=self.kind,
            round=self.round,
            rounds=self.rounds,
            phase=self.phase,
            shard_count=self.task_count,
            done=self.ok(self.round, "train") + self.diverged(self.round, "train"),
            failed=self.failed_total,
            diverged=self.diverged(self.round, "train"),
            created_at=self.created_at,
            finished_at=self.finished_at,
            result_uri=self.result_uri,
            error=self.error,
            cancel_requested_at=self.cancel_requested_at,
            enqueuing=self.enqueuing(),
            cost_usd=self.cost_micro_usd / 1_000_000,
            budget_usd=self.request.budget_usd,
            budget_stopped_at=None if self.budget_stop is None else self.budget_stop.get("at"),
            tenant=self.request.tenant,
            priority=self.request.priority,
            queued=self.in_window() if self.window is not None else None,
            window=self.window,
        )

    def frozen_as(self) -> tuple[str, str | None] | None:
        """The ending it was frozen with (``JobStore.freeze_ending``), if any: an invocation that
        froze it and stopped before the end leaves it to the next to finish the same way."""
        if self.ending is None or self.terminal:
            return None
        return str(self.ending["status"]), self.ending.get("error")

    def in_window(self) -> int:
        """Train tasks sent and not counted (queued or running; 0 once the job ended)."""
        return 0 if self.terminal else self.train_out()

    def train_out(self) -> int:
        """Train tasks sent and neither counted nor dropped (``shardq.core.outstanding``): a FedBuff
        job's and an asynchronous sweep's over every round (their tasks span rounds: the round-0
        fan-out plus each task a freed slot sent, ``usent``; each rung's decided tasks), any other
        job's in its current round's train phase."""

        def total(kinds: tuple[str, ...]) -> int:
            return sum(
                v for (kind, _, phase), v in self.counters.items() if kind in kinds and phase == "train"
            )

        if self.request.asynchronous:
            return max(0, total(("enq",)) - total(("ok", "fail", "div", "drop")))
        strategy = self.request.strategy
        if strategy is not None and strategy.name == FEDBUFF:
            return max(0, total(("enq", "usent")) - total(("upd", "ufail", "drop")))
        if self.phase != "train":
            return 0
        drops = self.counters.get(("drop", self.round, "train"), 0)
        return max(0, self.enqueued(self.round, "train") - self.done(self.round, "train") - drops)

    def enqueuing(self) -> str | None:
        """``ENQUEUING n/N sent`` while the current phase's fan-out is incomplete (None once done)."""
        if self.request.asynchronous:
            return None  # an asynchronous sweep decides its tasks one result at a time: no fan-out
        if self.window is not None and self.phase == "train":
            return None  # windowed: the rest waits by design (``queued``/``window`` say where it is)
        round_no, phase = self.round, self.phase
        strategy = self.request.strategy
        if strategy is not None and strategy.name == FEDBUFF:
            if self.window is not None:
                return None  # windowed: round 0's first updates go out as the window allows
            # FedBuff's only fan-out is round 0's first update per client slot; later tasks go out
            # one recorded update at a time (``shardq.core.fedbuff``), never as a fan-out to repair.
            round_no, phase = 0, "train"
        sent, total = self.enqueued(round_no, phase), self.fan_out(round_no, phase)
        return f"ENQUEUING {sent}/{total} sent" if self.status == "RUNNING" and sent < total else None

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> JobRecord:
        """The record of a table item (attributes this version does not know are ignored)."""
        raw = _from_item(item)
        counters: dict[tuple[str, int, str], int] = {}
        for name, value in raw.items():
            m = _COUNTER_RE.match(name)
            if m:
                counters[(m.group(1), int(m.group(2)), m.group(3))] = int(value)
        return cls(
            job_id=raw["job_id"],
            kind=raw["kind"],
            status=raw["status"],
            request_json=raw["request"],
            request_hash=raw.get("request_hash", ""),
            rounds=int(raw.get("rounds", 1)),
            task_count=int(raw.get("task_count", 0)),
            max_failed_shards=int(raw.get("max_failed_shards", 0)),
            created_at=raw.get("created_at", ""),
            round=int(raw.get("round", 0)),
            phase=raw.get("phase", "train"),
            round_started_at=raw.get("round_started_at"),
            updated_at=raw.get("updated_at"),
            failed_total=int(raw.get("failed_total", 0)),
            model_uri=raw.get("model_uri"),
            finished_at=raw.get("finished_at"),
            result_uri=raw.get("result_uri"),
            error=raw.get("error"),
            event_pending=bool(raw.get("event_pending", False)),
            expires_at=raw.get("expires_at"),
            retry_generation=int(raw.get("retry_generation", 0)),
            closed_round=raw.get("closed_round"),
            ranges_sent_at=raw.get("ranges_sent_at"),
            cancel_requested_at=raw.get("cancel_requested_at"),
            window=None if raw.get("window") is None else int(raw["window"]),
            counters=MappingProxyType(counters),
            cost_micro_usd=int(raw.get(COST_ATTRIBUTE, 0)),
            budget_stop=raw.get(BUDGET_STOP_ATTRIBUTE),
            ending=raw.get(ENDING_ATTRIBUTE),
        )

    def item(self) -> dict[str, Any]:
        """The table item of this record."""
        data: dict[str, Any] = {
            "pk": f"JOB#{self.job_id}",
            "sk": "JOB",
            "job_id": self.job_id,
            "kind": self.kind,
            "status": self.status,
            "request": self.request_json,
            "request_hash": self.request_hash,
            "rounds": self.rounds,
            "task_count": self.task_count,
            "max_failed_shards": self.max_failed_shards,
            "created_at": self.created_at,
            "round": self.round,
            "phase": self.phase,
            "round_started_at": self.round_started_at,
            "updated_at": self.updated_at,
            "failed_total": self.failed_total,
            "model_uri": self.model_uri,
            "finished_at": self.finished_at,
            "result_uri": self.result_uri,
            "error": self.error,
            "event_pending": True if self.event_pending else None,
            "expires_at": self.expires_at,
            "retry_generation": self.retry_generation or None,
            "closed_round": self.closed_round,
            "ranges_sent_at": self.ranges_sent_at,
        }
        data.update({_counter(*key): value for key, value in self.counters.items()})
        return _to_item(data)


@dataclass(frozen=True)
class JobState:
    """Where a job is, without its request: what a worker needs to know before it runs a task."""

    status: str
    round: int
    phase: str
    closed_round: int | None = None
    cancelling: bool = False
    # Its budget is spent (``shardq.core.spend``): queued tasks are dropped unrun.
    budget_spent: bool = False

    @property
    def terminal(self) -> bool:
        """True once the job SUCCEEDED, FAILED or was CANCELLED."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class ResultRecord:
    """One recorded outcome of a task, as the table holds it."""

    result: ShardResult
    recorded_at: str
    source: str = "worker"
    task_body: str | None = None
    receive_count: int | None = None

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> ResultRecord:
        """The record of a result item."""
        raw = _from_item(item)
        return cls(
            result=ShardResult.from_json(raw["result"]),
            recorded_at=raw.get("recorded_at", ""),
            source=raw.get("source", "worker"),
            task_body=raw.get("task"),
            receive_count=raw.get("receive_count"),
        )


@dataclass(frozen=True)
class Outcome:
    """One outcome to record: the result plus, for a dead task, its body and receive count."""

    result: ShardResult
    source: str = "worker"
    task_body: str | None = None
    receive_count: int | None = None
    # When the results queue took it (its ``SentTimestamp``, seconds since the epoch): the
    # aggregator measures each job's top-up round trip from it (``shardq.core.depth``). Never stored,
    # never compared (a redelivered result is the same outcome).
    sent_at: float | None = field(default=None, compare=False)

    @property
    def phase_counter(self) -> str:
        """The counter attribute this outcome increments."""
        status = self.result.status
        kind = "ok" if status == "succeeded" else "div" if status == "diverged" else "fail"
        return _counter(kind, self.result.round, self.result.task_type)

    def key(self) -> dict[str, Any]:
        """The key of its result item."""
        r = self.result
        return _result_key(r.job_id, r.round, r.task_type, r.shard_id)

    def item(self, recorded_at: str) -> dict[str, Any]:
        """The result item."""
        r = self.result
        return {
            **self.key(),
            **_to_item(
                {
                    "outcome": r.status,
                    "result": r.to_json(),
                    "source": self.source,
                    "task": self.task_body,
                    "receive_count": self.receive_count,
                    "recorded_at": recorded_at,
                }
            ),
        }


@dataclass
class RecordOutcome:
    """Which outcomes were newly recorded and counted, which were duplicates of recorded ones, and
    which were late (their round had closed: recorded apart, never counted)."""

    recorded: list[Outcome]
    duplicates: list[Outcome]
    late: list[Outcome] = field(default_factory=list)
