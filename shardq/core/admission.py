"""Admission: which tasks may go on the queue, when — the one gate every send passes.

The task queue is FIFO: workers take the oldest available message groups first, so a job sent
behind a backlog waits for all of it (a 4-shard job took 71 s behind a 3,000-shard one instead of
2.7 s). So no job puts its whole round on the queue. Each keeps a bounded **window** of tasks
sent but not yet counted (queued or running), ``window_per_lane × max_parallel`` at most, and the
aggregator tops the window up from the job's enqueue cursor as its results are counted
(``Enqueuer.top_up``, called by ``Advancer.advance``): every running job's next tasks sit near the
head of the queue, whatever the others' backlogs. The cursor only moves forward (a conditional
update) and every message keeps its deduplication id, so a top-up repeated by a redelivered
result batch, two racing aggregators or a killed one sends nothing twice and skips nothing.

Sharing a saturated fleet (a backlog of visible tasks seen within ``SATURATION_HOLD_S``): each
job's window is scaled

* by its tenant's weight over the largest weight among tenants with running jobs: tasks wait in
  one queue, so by Little's law each job's throughput is its tasks in the system over the common
  time in it, and the tenants' throughputs follow their windows, i.e. their weights;
* by its urgency ``u = 2 ** -(gap / 100)``, where ``gap`` is how far its aged priority lies below
  the highest aged priority of any running job (``Scheduling.effective_priority``), over the sum
  of its tenant's jobs' urgencies (at least 1): a tenant's jobs split its share, the urgent ones
  first, and a job below the top priority gives way to the jobs above it, whichever their
  tenant. Each job keeps at least one task queued, and aging (+100 per
  ``priority_aging_seconds`` of running, up to 1000) closes any gap, so nothing starves;
* down to ``running_tasks // running jobs of the tenant`` under a ``running_tasks`` quota.

When no backlog was seen lately, the fleet has idle workers and every job gets its full window:
weights and priorities only decide who waits when someone must.

Quotas ``running_jobs`` and ``queued_shards`` are checked at submit (``check_submit``): a request
over one is refused with a ``ValidationError`` naming the quota, its limit and the current use
(the CLI exits 2; nothing is created). The use is read from the running jobs themselves (the
``by_status`` index), not kept in counters: it cannot drift, and two submits racing past one
check can overrun a quota by at most the submits in flight at that moment (documented).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from shardq.core import spend
from shardq.core.contracts import TrainingRequest, ValidationError
from shardq.core.depth import Pace
from shardq.core.jobstore import JobRecord, JobStore, Outcome
from shardq.core.outstanding import is_fedbuff
from shardq.core.store.running import running_jobs
from shardq.core.tenancy import AGING_STEP, DEFAULT_PRIORITY, Scheduling

# How long a snapshot of the running jobs (and of the queue's backlog) serves one container.
SNAPSHOT_TTL_S = 5.0
# A backlog seen within this long counts as a saturated fleet (hysteresis: windows that shrink
# under saturation must not grow back the moment the backlog drains).
SATURATION_HOLD_S = 60.0
# How soon a fleet seen without a backlog is looked at again: windows grow only while it stays so.
IDLE_RECHECK_S = 0.5


def _epoch(iso: str | None) -> float:
    if not iso:
        return 0.0
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class Running:
    """A running job as admission sees it."""

    job_id: str
    tenant: str
    priority: int
    started: float
    lanes: int
    # Tasks of the current round not yet counted (sent or not): the job's queued shards.
    remaining: int

    @classmethod
    def of(cls, job: JobRecord, scheduling: Scheduling) -> Running:
        """The admission view of ``job``."""
        request = job.request
        remaining = 0
        if job.phase == "train":
            remaining = max(0, job.expected(job.round, "train") - job.done(job.round, "train"))
        return cls(
            job_id=job.job_id,
            tenant=tenant_of(request, scheduling),
            priority=priority_of(request),
            started=_epoch(job.created_at),
            lanes=request.max_parallel,
            remaining=remaining,
        )


def counted(job: JobRecord, round_no: int) -> int:
    """Round ``round_no``'s train tasks counted, as the window sees them: its recorded outcomes.

    A FedBuff job's one windowed send is round 0's fan-out, the first task of each client slot
    (``JobRecord.fan_out``); its updates are counted per model version (``shardq.core.store.fedbuff``),
    never as round 0's outcomes, so its round 0 counts its updates recorded, whoever's, up to the
    tasks the fan-out sent: each frees a slot, handed on at once (``shardq.core.fedbuff``), so the
    window paces the first wave and the slots cap the tasks out. Counting none held the fan-out at
    its first window while version 0 was open."""
    if is_fedbuff(job):
        recorded = sum(v for (kind, _, _), v in job.counters.items() if kind in ("upd", "ufail"))
        return min(job.enqueued(round_no, "train"), recorded)
    return job.done(round_no, "train")


def tenant_of(request: TrainingRequest, scheduling: Scheduling) -> str:
    """The tenant a stored request runs as (its own, else the default; '' with neither)."""
    return request.tenant or scheduling.default_tenant or ""


def priority_of(request: TrainingRequest) -> int:
    """A request's priority (``DEFAULT_PRIORITY`` when it names none)."""
    return DEFAULT_PRIORITY if request.priority is None else request.priority


class QuotaExceeded(ValidationError):
    """A submit over a tenant's quota: nothing was created."""


@dataclass
class Admission:
    """Windows, shares, priorities and quotas over one job table.

    Parameters
    ----------
    store:
        The job store.
    scheduling:
        The parsed ``scheduling`` configuration (``shardq.core.tenancy``).
    clock:
        Seconds since the epoch.
    backlog:
        Visible tasks on the task queue now (the saturation signal); None: always saturated.
    in_flight:
        Tasks taken by workers and not yet finished (the fleet busy now); None: the fleet's size
        is unknown and a saturated fleet's windows are not shrunk toward it.
    """

    store: JobStore
    scheduling: Scheduling
    clock: Callable[[], float]
    backlog: Callable[[], int] | None = None
    in_flight: Callable[[], int] | None = None
    # Each job's task cycle and top-up round trip, measured from its counted results.
    pace: Pace = field(default_factory=Pace)
    # The task queue's in-flight counts read within SATURATION_HOLD_S: (when, count).
    _in_flight_reads: list[tuple[float, int]] = field(init=False, default_factory=list, repr=False)
    _in_flight_read_at: float = field(init=False, default=-math.inf, repr=False)
    _snapshot: list[Running] = field(init=False, default_factory=list, repr=False)
    _snapshot_at: float = field(init=False, default=-math.inf, repr=False)
    _backlog_seen_at: float = field(init=False, default=-math.inf, repr=False)
    _backlog_read_at: float = field(init=False, default=-math.inf, repr=False)

    @property
    def windowed(self) -> bool:
        """True when jobs keep bounded windows (``window_per_lane`` set)."""
        return self.scheduling.window_per_lane is not None

    # -- the gate -------------------------------------------------------------------------------

    def may_send(self, job: JobRecord) -> str | None:
        """Why no new task of ``job`` may go on the queue now (None: it may).

        The one gate of every send (``Enqueuer.enqueue``): a job that ended or is being
        cancelled sends nothing more. Tasks already running finish either way.
        """
        if job.terminal:
            return f"job {job.job_id} is {job.status}"
        if job.cancel_requested_at is not None:
            return f"job {job.job_id} is being cancelled"
        return spend.admission_refusal(job)

    def limit(self, job: JobRecord, round_no: int, phase: str, total: int) -> int:
        """How far (round, phase)'s enqueue cursor may go now: counted outcomes plus the window.

        A reduce (one task) is never held back: its round's tasks all ran already.
        """
        if phase != "train" or self.scheduling.window_per_lane is None:
            return total
        return min(total, counted(job, round_no) + self.window(job, round_no))

    def held_to(self, job: JobRecord, round_no: int, phase: str, stop: int, total: int) -> int | None:
        """The window a send of (round, phase) up to ``stop`` was held to, for the job record
        (``JobRecord.window``); None when there is none to record: a reduce (it keeps the train
        window slow start goes on from), or a round sent whole by a job never windowed. A windowed
        FedBuff job records its first send's window even when its fan-out (one task per client
        slot) fits in it: its other tasks go out one freed slot at a time, never from the cursor,
        and the window recorded is what shows its tasks out as ``queued`` (``JobRecord.view``)."""
        fits = stop >= total and job.window is None and not (self.windowed and is_fedbuff(job))
        if phase != "train" or fits:
            return None
        return stop - counted(job, round_no)

    def observe(self, outcomes: list[Outcome]) -> None:
        """Measure the pace of the jobs whose outcomes were just counted (``shardq.core.depth``)."""
        if self.windowed:
            self.pace.observe(outcomes, self.clock())

    def window(self, job: JobRecord, round_no: int | None = None) -> int:
        """Tasks of ``job``'s round ``round_no`` (default: its current round) it may have sent but
        not counted (queued or running) now; at least 1 (its whole round's tasks when windows are
        off)."""
        round_no = job.round if round_no is None else round_no
        sched = self.scheduling
        if sched.window_per_lane is None:
            return job.expected(round_no, "train")
        me = Running.of(job, sched)
        saturated = self.saturated()
        # Each lane's depth is its bandwidth-delay product (at least window_per_lane), by the task
        # cycle that counts on a saturated fleet or one with idle workers (core.depth).
        depth = self.pace.depth(
            me.job_id, sched.window_per_lane, saturated=saturated, last=job.window, lanes=me.lanes
        )
        cap = max(1, depth * me.lanes)
        active = {r.job_id: r for r in self.running()}
        active[me.job_id] = me
        mine = [r for r in active.values() if r.tenant == me.tenant]
        share = float(cap)
        if saturated:
            shares = self.shares(list(active.values()))
            share *= shares[me.job_id] * self.fleet_factor(active.values(), shares)
        else:
            # A job's first window is one task per lane (``first_window``), then slow start.
            share = min(share, self.slow_start(job, round_no, self.first_window(me)))
        window = max(1, min(cap, math.ceil(share)))
        quota = sched.tenant(me.tenant).quotas.running_tasks
        if quota is not None:
            window = max(1, min(window, quota // len(mine)))
        return window

    @staticmethod
    def first_window(job: Running) -> int:
        """A job's first window with idle workers: one task per lane, what it can run at once.

        Before its first results a job knows neither its pace nor how many workers are idle, and
        a task sent cannot be called back: whatever it queues beyond the idle workers sits in
        front of every job submitted after it until the fleet has worked through it. The floor of
        ``window_per_lane`` per lane queued a second task on every lane (16 for 8 lanes) before
        any backlog showed; on 3 workers busy with 1 s tasks a job submitted 3 s later still waited
        2.3 s for its first task (BENCHMARKS §15, run D). One per lane queues at most the lanes
        beyond the idle workers; slow start then doubles the window per round trip while no
        backlog shows, and the lanes' depth (at least ``window_per_lane``) bounds it as before."""
        return max(1, job.lanes)

    @staticmethod
    def slow_start(job: JobRecord, round_no: int, floor: int) -> int:
        """The most tasks ``job``'s window may grow to now with idle workers: its last window
        plus the results of round ``round_no`` (the round being sent) counted since that send
        (``floor`` before any send was held to one). So a window at most doubles per round trip
        (TCP's slow start), a redelivered batch grows nothing, and a backlog shows, shrinking the
        windows, before a burst of depth × lanes is queued. A new round's send counts the last
        round's results since its last send (its whole window: nothing of the new round is sent
        or counted yet), so slow start goes on from where the last round left it."""
        last = job.window
        if last is None:
            return floor
        since = counted(job, round_no) - (job.enqueued(round_no, "train") - last)
        return last + max(0, since)

    def shares(self, active: list[Running]) -> dict[str, float]:
        """Each running job's share of its full window on a saturated fleet (0 < share <= 1): its
        tenant's weight over the largest, times its urgency over its tenant's jobs' urgencies."""
        sched = self.scheduling
        weights = {r.tenant: sched.tenant(r.tenant).weight for r in active}
        now = self.clock()
        aged = {r.job_id: sched.effective_priority(r.priority, now - r.started) for r in active}
        top = max(aged.values())
        # Whole priority points: jobs a fraction of a point apart (aged a moment apart) are equal.
        urgency = {job_id: 2.0 ** (-math.floor(top - p) / AGING_STEP) for job_id, p in aged.items()}
        # The tenant's share goes to its jobs by urgency; a tenant whose jobs all lie below the
        # top priority (the sum under 1) gets that much less of its share.
        split: dict[str, float] = {}
        for r in active:
            split[r.tenant] = split.get(r.tenant, 0.0) + urgency[r.job_id]
        heaviest = max(weights.values())
        return {
            r.job_id: weights[r.tenant] / heaviest * urgency[r.job_id] / max(1.0, split[r.tenant])
            for r in active
        }

    # -- submit ---------------------------------------------------------------------------------

    def check_submit(
        self, request: TrainingRequest, *, invoked_as: str | None = None, quotas: bool = True
    ) -> str:
        """The tenant ``request`` runs as; raises ``ValidationError`` (an unknown tenant, another
        team's name) or, with ``quotas``, ``QuotaExceeded`` (naming the quota, its limit and
        current use)."""
        sched = self.scheduling
        name, problems = sched.resolve(request.tenant, invoked_as=invoked_as)
        if name is None:
            raise ValidationError("TrainingRequest", problems)
        limits = sched.tenant(name).quotas
        # The tenant's monthly budget (the spend guard, shardq.core.spend): a quota on dollars.
        spent = spend.monthly_refusal(self.store, name, sched.tenant(name).monthly_budget_usd)
        if quotas and spent is not None:
            raise QuotaExceeded("TrainingRequest", [spent])
        if not quotas or limits == type(limits)():
            return name
        mine = [r for r in self.running(fresh=True) if r.tenant == name]
        where = f"cdk.json scheduling.tenants.{name}.quotas"
        jobs_limit = min(q for q in (limits.running_jobs, limits.running_tasks, math.inf) if q is not None)
        if len(mine) + 1 > jobs_limit:
            quota = "running_jobs" if jobs_limit == limits.running_jobs else "running_tasks"
            problems.append(
                f"quota {quota} of tenant '{name}' is {int(jobs_limit)}: {len(mine)} job(s) running "
                f"now; wait for one to finish (or cancel one), or raise {where}.{quota}"
            )
        if limits.queued_shards is not None:
            queued = sum(r.remaining for r in mine)
            if queued + request.task_count > limits.queued_shards:
                problems.append(
                    f"quota queued_shards of tenant '{name}' is {limits.queued_shards}: {queued} "
                    f"shard(s) queued now and this job adds {request.task_count}; submit fewer shards "
                    f"(sharding), wait for running jobs, or raise {where}.queued_shards"
                )
        if problems:
            raise QuotaExceeded("TrainingRequest", problems)
        return name

    # -- what is running ------------------------------------------------------------------------

    def running(self, *, fresh: bool = False) -> list[Running]:
        """The running jobs, from a snapshot at most ``SNAPSHOT_TTL_S`` old (``fresh``: read now)."""
        now = self.clock()
        if fresh or now - self._snapshot_at >= SNAPSHOT_TTL_S:
            self._snapshot = [Running.of(job, self.scheduling) for job in running_jobs(self.store)]
            self._snapshot_at = now
        return self._snapshot

    def refresh(self) -> None:
        """Forget the snapshots: the next question reads the running jobs and the backlog anew."""
        self._snapshot_at = self._backlog_read_at = self._in_flight_read_at = -math.inf

    def fleet_factor(self, active: Iterable[Running], shares: dict[str, float]) -> float:
        """How much of each job's share a saturated fleet needs queued: the busy workers over the
        lanes the running jobs' shares would keep busy (at most 1; 1 when no task ran lately, or
        the fleet's size is unknown).

        Each busy worker needs one task running and one round trip's worth queued behind it, no
        more: what is queued in all then drains in about one round trip, so a newcomer's tasks sit
        that near the head of the queue. Shares keep their ratios (weights, priorities).

        The busy workers are the most tasks seen in flight within ``SATURATION_HOLD_S`` (a read
        every ``SNAPSHOT_TTL_S``), not the last read: one read is an instant, and workers of short
        tasks spend part of each cycle between a delete and the next receive, so a read of 0 or 1
        of 3 busy workers is common. A fleet's size moves slowly; a lone low read must neither
        throttle the windows (the flood starved) nor unshrink them (a read of 0 gave the full depth)."""
        if self.in_flight is None:
            return 1.0
        now = self.clock()
        if now - self._in_flight_read_at >= SNAPSHOT_TTL_S:
            self._in_flight_read_at = now
            reads = [(at, n) for at, n in self._in_flight_reads if now - at < SATURATION_HOLD_S]
            self._in_flight_reads = [*reads, (now, self.in_flight())]
        busy = max((n for _, n in self._in_flight_reads), default=0)
        lanes = sum(max(1, min(r.lanes, r.remaining)) * shares[r.job_id] for r in active)
        if busy <= 0 or lanes <= 0:
            return 1.0
        return min(1.0, busy / lanes)

    def saturated(self) -> bool:
        """True when a backlog of visible tasks was seen within ``SATURATION_HOLD_S``."""
        if self.backlog is None:
            return True
        now = self.clock()
        held = now - self._backlog_seen_at < SATURATION_HOLD_S
        if now - self._backlog_read_at >= (SNAPSHOT_TTL_S if held else IDLE_RECHECK_S):
            self._backlog_read_at = now
            if self.backlog() > 0:
                self._backlog_seen_at = now
        return now - self._backlog_seen_at < SATURATION_HOLD_S
