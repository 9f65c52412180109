"""FedBuff: buffered asynchronous FedAvg (Nguyen et al., AISTATS 2022) on shardq's exactly-once aggregator.

A ``data_parallel`` job whose ``strategy.name`` is ``fedbuff`` has no round barrier:

* Each client (shard) trains one update at a time, always from the latest global model version.
  Its ``n``-th update is the train task ``(round = n, shard = client)``: the task key, and so the
  deduplication id, the outcome's identity and its checkpoints, is unique per update.
* Each update is recorded once (``shardq.core.store.fedbuff``), in one transaction with the
  buffer count it moves, together with its *base* version (the version its task trained from)
  and the version it went into (the buffer filling when it arrived): τ = version − base. An
  update with τ > ``max_staleness`` is recorded ``late`` and not applied; one that arrives after
  the last version's buffer filled is ``surplus``; a failed or non-finite one is ``failed``
  (counted against ``max_failed_shards``) and never enters a buffer.
* As soon as an update is recorded its client gets its next task, from the latest version that
  exists (the job record's ``round``), as FLSim and the paper do: a reduce in progress does not
  hold it back. With fewer client slots (``max_parallel``) than clients, the freed slot goes to
  the client that waited longest instead (never trained first, then the oldest last update:
  ``Driver._hand``), so at most ``max_parallel`` client tasks are ever out. Updates that arrive
  while version v's reduce runs go into buffer v + 1 (or later), stale by ≥ 1 and weighted by
  s(τ). The one exception: a task whose update is certain to be late (the open buffer is already
  more than ``max_staleness`` versions past the latest model, so its τ would exceed S) is not
  sent; its slot waits for the next version (``fb_waiting``), which only happens when S < 1 + the
  versions filled ahead of the reduces.
* Every ``buffer_size`` (K) applied updates the buffer of version v closes: one reduce task steps
  the server model with exactly those K staleness-weighted deltas (``shardq.worker.fedbuff``) into
  v + 1. ``rounds`` is the number of server steps. The job record's ``round`` is the current version.

With K = the number of clients, ``max_staleness`` 0 and every client equally fast, each buffer
holds one update per client from the same version (a client that finished waits: any task from v
would be late against buffer v + 1), and the step is synchronous FedAvg's. With S ≥ 1 the clients
train on while the reduce runs, and the buffers overlap versions (that is FedBuff, not FedAvg).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from shardq.core import planning
from shardq.core.artifacts import put_json
from shardq.core.batchcalls import JobStoreError, pause
from shardq.core.contracts import ShardResult, TrainingRequest, ValidationError
from shardq.core.fedbuff_calibration import calibrate_inputs
from shardq.core.fedbuff_params import (
    NAME,
    average_section,
    cached_calibration,
    final_model_uri,
    server_lr_at,
    staleness_weight,
)
from shardq.core.jobstore import JobRecord, Outcome
from shardq.core.metrics import summarize_round
from shardq.core.store.fedbuff import (
    AFTER_END,
    APPLIED,
    FAILED,
    LATE,
    SURPLUS,
    Counts,
    FedBuffStore,
    Placer,
    Receiver,
    Update,
)
from shardq.core.store.keys import MAX_RECORD_ATTEMPTS

if TYPE_CHECKING:
    from shardq.core.advance import Advancer


def applies(request: TrainingRequest | None) -> bool:
    """True for a FedBuff job."""
    return request is not None and request.strategy is not None and request.strategy.name == NAME


def placer(request: TrainingRequest) -> Placer:
    """Where new updates go under the job's counts: the rules of the module docstring."""
    assert request.strategy is not None
    params = request.strategy.params
    k, most = int(params["buffer_size"]), int(params["max_staleness"])
    versions = request.round_count

    def place(counts: Counts, new: Sequence[Update]) -> tuple[list[Update], Counts]:
        open_, fill, applied, late, failed = (
            counts.open,
            counts.fill,
            counts.applied,
            counts.late,
            counts.failed,
        )
        out = []
        for u in new:
            tau = max(0, open_ - u.base)
            if u.state == FAILED:
                out.append(replace(u, version=open_, tau=tau, weight=0.0))
                failed += 1
            elif open_ >= versions:
                out.append(replace(u, state=SURPLUS, version=open_, tau=tau, weight=0.0))
            elif tau > most:
                out.append(replace(u, state=LATE, version=open_, tau=tau, weight=0.0))
                late += 1
            else:
                out.append(
                    replace(u, state=APPLIED, version=open_, tau=tau, weight=staleness_weight(params, tau))
                )
                applied += 1
                fill += 1
                if fill == k:
                    open_, fill = open_ + 1, 0
        after = replace(
            counts,
            seq=counts.seq + len(new),
            open=open_,
            fill=fill,
            applied=applied,
            late=late,
            failed=failed,
        )
        # Each update's place in the job's recording order (a retry forgives failures below one).
        return [replace(u, order=counts.seq + i) for i, u in enumerate(out)], after

    return place


def rotates(request: TrainingRequest) -> bool:
    """True when the job has fewer client slots than clients (``max_parallel`` below them): a freed
    slot goes to the client that waited longest (``Driver._hand``), not back to its own client."""
    return request.max_parallel < request.task_count


def must_wait(job: JobRecord, open_version: int) -> bool:
    """True when a next task sent now (from version ``job.round``, the latest that exists) would
    certainly be late: its update goes into buffer ``open_version`` or a later one, so its τ is at
    least ``open_version − job.round``, and that is already over ``max_staleness``. Otherwise the
    task goes out at once, whatever reduce is running (FLSim's and the paper's semantics)."""
    assert job.request.strategy is not None
    return open_version - job.round > int(job.request.strategy.params["max_staleness"])


def foreign(request: TrainingRequest, job_id: str, outcome: Outcome) -> str | None:
    """Why a FedBuff train outcome names no task the job could have sent (None when it could):
    its sequence number is checked against the recorded updates when it is recorded."""
    r = outcome.result
    if r.shard_id >= request.task_count:
        return f"shard_id {r.shard_id} does not exist: job {job_id} has {request.task_count} clients"
    return None


def version_summary(
    job_id: str, version: int, updates: Sequence[Update], started_at: str | None = None
) -> dict[str, Any]:
    """A version's round summary: ``summarize_round``'s shape over its applied updates (their
    weighted metrics, samples, durations), plus its FedBuff accounting (applied, late, clients,
    the staleness histogram and mean)."""
    applied = [u for u in updates if u.state == APPLIED]
    late = [u for u in updates if u.state == LATE]
    histogram: dict[str, int] = {}
    for u in applied:
        histogram[str(u.tau)] = histogram.get(str(u.tau), 0) + 1
    results = [
        ShardResult(
            job_id=job_id,
            round=u.seq,
            shard_id=u.client,
            task_type="train",
            status="succeeded",
            metrics=u.metrics,
            num_samples=u.num_samples,
            model_uri=u.model_uri,
            duration_s=u.duration_s,
        )
        for u in applied
    ]
    summary = summarize_round(version, results, started_at)
    summary["version"] = version
    summary["fedbuff"] = {
        "applied": len(applied),
        "late": len(late),
        "clients": sorted({u.client for u in applied}),
        "staleness_histogram": histogram,
        "mean_staleness": (sum(u.tau for u in applied) / len(applied)) if applied else 0.0,
        "max_staleness": max((u.tau for u in applied), default=0),
    }
    return summary


def reduce_inputs(updates: Sequence[Update], model_of: Mapping[int, str]) -> dict[str, Any]:
    """The claim check a FedBuff reduce reads: each applied update's model, its base model, its
    weight (num_samples × s(τ)) and the buffer's total samples (the deltas' denominator)."""
    applied = sorted((u for u in updates if u.state == APPLIED), key=lambda u: (u.client, u.seq))
    rows = [
        {
            "client": u.client,
            "seq": u.seq,
            "model_uri": u.model_uri,
            "base_model_uri": model_of[u.base],
            "base": u.base,
            "tau": u.tau,
            "num_samples": u.num_samples,
            "staleness_weight": u.weight,
        }
        for u in applied
    ]
    return {"fedbuff": rows, "models": rows, "total_samples": sum(u.num_samples for u in applied)}


@dataclass
class Driver:
    """FedBuff's part of ``Advancer``: record updates, send each client's next task, close buffers
    and turn reduces into versions. Uses the advancer's store, enqueuer, finisher and bucket."""

    adv: Advancer

    @property
    def fb(self) -> FedBuffStore:
        return FedBuffStore(self.adv.store)

    # -- recording ------------------------------------------------------------------------------

    def ingest(
        self, job_id: str, request: TrainingRequest, outcomes: list[Outcome], *, deadline: float | None
    ) -> tuple[list[Outcome], list[tuple[Outcome, Exception]]]:
        """Record the job's train outcomes as updates and send their clients' next tasks; returns
        the outcomes left for the shared path (reduces) and those naming no task ever sent."""
        train = [o for o in outcomes if o.result.task_type == "train"]
        rest = [o for o in outcomes if o.result.task_type != "train"]
        if not train:
            return rest, []
        previous = self.fb.updates(
            job_id, [(o.result.shard_id, o.result.round - 1) for o in train if o.result.round]
        )
        # A first update trains from version 0 (round 0's fan-out, one task per client slot) or from
        # the version its slot was handed at (``FIRST#``).
        firsts: dict[int, int] = {}
        wave = set(planning.participants(request, 0))
        zero = [o.result.shard_id for o in train if not o.result.round]
        if zero and rotates(request):
            firsts = self.fb.first_bases(job_id, zero)
            job = self.adv.store.get_job(job_id)
            wave = set(job.planned(0, "train")[: job.first_wave()])
        new: list[Update] = []
        bad: list[tuple[Outcome, Exception]] = []
        for o in train:
            r = o.result
            if r.round == 0:
                if r.shard_id not in wave and r.shard_id not in firsts:
                    problem = f"job {job_id} never sent update 0 of client {r.shard_id}"
                    bad.append((o, ValidationError("ShardResult", [problem])))
                    continue
                base = firsts.get(r.shard_id, 0)
            else:
                before = previous.get((r.shard_id, r.round - 1))
                if before is None or before.next_base is None:
                    problem = f"job {job_id} never sent update {r.round} of client {r.shard_id}"
                    bad.append((o, ValidationError("ShardResult", [problem])))
                    continue
                base = before.next_base
            new.append(_update(r, base))
        # Two copies of one update in a batch (a redelivery): one is recorded, a success first.
        unique: dict[tuple[int, int], Update] = {}
        for u in new:
            kept = unique.get((u.client, u.seq))
            if kept is None or (kept.state == FAILED and u.state != FAILED):
                unique[(u.client, u.seq)] = u
        recorded, duplicates = self.fb.record(
            job_id,
            list(unique.values()),
            placer(request),
            deadline=deadline,
            tenant=request.tenant,
            idle=rotates(request),  # its client waits for a slot (``Driver._hand``)
        )
        self.adv.metric("FedBuffUpdatesRecorded", len(recorded), "Count")
        if duplicates:
            self.adv.metric("DuplicateResults", len(duplicates), "Count")
        self.follow_up(job_id, [*recorded, *duplicates], deadline=deadline)
        return rest, bad

    # -- next tasks -----------------------------------------------------------------------------

    def follow_up(self, job_id: str, updates: Sequence[Update], *, deadline: float | None = None) -> None:
        """Hand each update's freed slot on (``_hand``) and send its task, from the latest version that
        exists, at once, even while reduces run; a slot waits for the next version only when its
        task's update would certainly be late (``must_wait``)."""
        pending = [u for u in updates if not u.next_sent and u.state != AFTER_END]
        if not pending:
            return
        job = self.adv.store.get_job(job_id)
        if job.terminal:
            return
        # A slot handed before a crash (its task counted out) may or may not be on the queue: send
        # its task (again; SQS drops a copy within its window) whatever the gate, so the count it
        # holds is answered by an outcome or a drop, never left waiting for a task that was not sent.
        self._send(job, [u for u in pending if u.slot is not None], deadline=deadline)
        pending = [u for u in pending if u.slot is None]
        if not pending or self.adv.enqueuer.refusal(job) is not None:
            return
        counts = self.fb.counts(job_id)
        if counts.open >= job.rounds:
            return  # every version's buffer is full: no more updates are needed
        if must_wait(job, counts.open):
            self.fb.wait(job_id, [u.name for u in pending])
            # The reduce may have made the next version meanwhile (and read the waiting set before
            # these joined it): look again, and send them ourselves if so.
            job = self.adv.store.get_job(job_id)
            if job.terminal or must_wait(job, self.fb.counts(job_id).open):
                return
            self.send_waiting(job, deadline=deadline)
            return
        self._hand(job, pending, deadline=deadline)

    def send_waiting(self, job: JobRecord, *, deadline: float | None = None) -> None:
        """Hand on the slots that waited for the job's current version (none once the job may send
        nothing: a spent budget, a cancel)."""
        waiting = self.fb.counts(job.job_id).waiting
        if not waiting:
            return
        keys = [(int(c), int(n)) for c, n in (name.split(":") for name in waiting)]
        updates = [u for u in self.fb.updates(job.job_id, keys).values() if not u.next_sent]
        # Handed before a crash: sent whatever the gate (``follow_up``); the rest as it allows.
        self._send(job, [u for u in updates if u.slot is not None], deadline=deadline)
        if self.adv.enqueuer.refusal(job) is None:
            self._hand(job, [u for u in updates if u.slot is None], deadline=deadline)
            self.fb.unwait(job.job_id, waiting)

    def _hand(self, job: JobRecord, givers: Sequence[Update], *, deadline: float | None) -> None:
        """Give each freed slot (in recording order) to the task it goes to, once (``FedBuffStore.hand``),
        then send those tasks. With as many slots as clients, a client's slot goes to its own next
        task (FedBuff as the paper runs it); with fewer (``JobRecord.client_slots``), to the client
        that waited longest since its last task: a client never trained first (in shard order),
        then the oldest last update (``Receiver``, the ``IDLE#`` items)."""
        rotate = rotates(job.request)
        clients = job.planned(0, "train")
        first = job.counters.get(("usent", 0, "train"), 0)
        beyond = job.first_wave()  # the first wave's clients got their first tasks from the cursor
        idle: list[Receiver] = []
        handed, bases = [], {}  # the bases of the tasks handed here (the others are read)
        for giver in sorted(givers, key=lambda u: (u.order, u.client, u.seq)):
            got = None
            for attempt in range(MAX_RECORD_ATTEMPTS):
                if not rotate:
                    to = Receiver(giver.client, giver.seq + 1)
                elif beyond + first < len(clients):
                    to = Receiver(clients[beyond + first], 0, first=first)
                else:
                    idle = idle or self.fb.idle(job.job_id, len(givers))
                    if not idle:
                        break  # every client has a task out: the slot stays free (not reached: below)
                    to = idle[0]
                got = self.fb.hand(job.job_id, giver, to, job.round)
                if got is not None and got[0] == to.name:  # to is taken, by this hand or another
                    first, idle = (first + 1, idle) if to.seq == 0 else (first, idle[1:])
                if got is not None:
                    break
                # taken meanwhile (another aggregator's hand): look again
                first = self.adv.store.get_job(job.job_id).counters.get(("usent", 0, "train"), 0)
                idle = []
                time.sleep(pause(attempt))
            else:
                raise JobStoreError(f"job {job.job_id}: could not hand update {giver.name}'s slot: conflicts")
            if got is not None:
                handed.append(replace(giver, slot=got[0]))
                if got[1]:
                    bases[got[0]] = job.round
        # Each giver left an IDLE# item as it was recorded, so a rotating hand always finds a client.
        self._send(job, handed, bases, deadline=deadline)

    def _send(
        self,
        job: JobRecord,
        givers: Sequence[Update],
        bases: Mapping[str, int] | None = None,
        *,
        deadline: float | None,
    ) -> None:
        """Send the tasks the givers' slots went to (each counted out when handed), each from the
        version fixed for it (``bases`` by slot, else read), then mark them sent: a crash between any
        two steps leaves the count right (``FedBuffStore.hand``)."""
        if not givers:
            return
        request, layout = job.request, planning.Layout(self.adv.bucket, job.job_id)
        known = dict(bases or {})
        targets = [t for t in (u.slot_task for u in givers) if t is not None]
        unknown = [(client, seq) for client, seq in targets if f"{client}:{seq}" not in known]
        before = self.fb.updates(job.job_id, [(client, seq - 1) for client, seq in unknown if seq])
        firsts = self.fb.first_bases(job.job_id, [client for client, seq in unknown if not seq])
        models: dict[int, str | None] = {job.round: job.model_uri}
        tasks = []
        for client, seq in targets:
            if f"{client}:{seq}" in known:
                base: int | None = known[f"{client}:{seq}"]
            else:
                base = before[(client, seq - 1)].next_base if seq else firsts.get(client, 0)
            if base is None:
                raise JobStoreError(f"job {job.job_id}: update {client}:{seq - 1} has no next base")
            if base not in models:
                models[base] = self.model_of(job, base)
            tasks.append(planning.train_task(request, job.job_id, layout, seq, client, models[base]))
        lanes = request.max_parallel
        self.adv.enqueuer.fanout.send((self.adv.enqueuer.message(t, lanes) for t in tasks), deadline=deadline)
        self.adv.metric("TasksEnqueued", len(tasks), "Count")
        for u in givers:
            self.fb.mark_sent(job.job_id, u.client, u.seq)

    def model_of(self, job: JobRecord, version: int) -> str | None:
        """Version ``version``'s global model: the starting model, or the reduce that made it."""
        if version == 0:
            return job.request.model.get("init_uri")
        reduced = self.adv.store.results(job.job_id, version - 1, "reduce")
        return reduced[0].result.model if reduced else None

    # -- versions -------------------------------------------------------------------------------

    def step(self, job: JobRecord, deadline: float | None) -> bool:
        """One move of a running FedBuff job: close a full buffer into its reduce, or turn a finished
        reduce into the next version (or the end). False when it must wait."""
        if job.enqueued(0, "train") < job.fan_out(0, "train"):
            # The first updates of the first wave (one per client slot) go out as a round 0 fan-out;
            # a task window (shardq.core.admission) may hold some back: send them as the window
            # allows (idempotent, from the cursor).
            self.adv.enqueuer.enqueue(job, 0, "train", job.request.model.get("init_uri"), deadline=deadline)
        if job.phase == "train":
            counts = self.fb.counts(job.job_id)
            if counts.waiting and not must_wait(job, counts.open):
                # a crash between making this version and sending its waiters
                self.send_waiting(job, deadline=deadline)
            if counts.open <= job.round:
                return False
            return self._close(job, deadline)
        if job.done(job.round, "reduce") < 1:
            return False
        return self._reduced(job, deadline)

    def _close(self, job: JobRecord, deadline: float | None) -> bool:
        """Version ``job.round``'s buffer is full: summarize it and send its reduce (once)."""
        v = job.round
        updates = self.fb.buffer(job.job_id, v)
        self.adv.store.put_round_summary(
            job.job_id, v, version_summary(job.job_id, v, updates, job.round_started_at)
        )
        bases = {u.base for u in updates if u.state == APPLIED}
        model_of = {b: (job.model_uri if b == v else self.model_of(job, b)) for b in bases}
        missing = [b for b, uri in model_of.items() if not uri]
        if missing:
            self.adv.finisher.finalize(
                job, "FAILED", f"version {missing[0]}'s model is unknown: its reduce left none"
            )
            return False
        layout = planning.Layout(self.adv.bucket, job.job_id)
        inputs = reduce_inputs(updates, {b: str(uri) for b, uri in model_of.items()})
        params = job.request.strategy.params if job.request.strategy else {}
        inputs["server_lr"] = server_lr_at(params, v, job.rounds)  # v's step (server_lr_schedule)
        average = average_section(params, v, str(job.model_uri))  # a model_average: the average so far
        if average is not None:
            inputs["average"] = average
        if cached_calibration(params):
            try:  # CA2FL: name each client's cached update (shardq.core.fedbuff_calibration)
                inputs = calibrate_inputs(
                    inputs, self.fb, job.job_id, v, job.task_count, layout,
                    lambda b: model_of[b] if b in model_of else self.model_of(job, b),
                )  # fmt: skip
            except LookupError as exc:
                self.adv.finisher.finalize(job, "FAILED", str(exc))
                return False
        put_json(self.adv.enqueuer.s3, self.adv.bucket, layout.reduce_inputs_key(v), inputs)
        self.adv.enqueuer.enqueue(job, v, "reduce", job.model_uri, deadline=deadline)
        self.adv.store.start_reduce(job.job_id, v)
        self.adv.metric("FedBuffVersionsClosed", 1, "Count")
        return True

    def _reduced(self, job: JobRecord, deadline: float | None) -> bool:
        """Version ``v``'s reduce has its outcome: v + 1 is the global model (or the job ends)."""
        v = job.round
        reduced = [row.result for row in self.adv.store.results(job.job_id, v, "reduce")]
        if not reduced or reduced[0].status != "succeeded":
            error = reduced[0].error if reduced else "no reduce result"
            self.adv.finisher.finalize(job, "FAILED", f"reduce of version {v} failed: {error}")
            return False
        model_uri = reduced[0].model
        self.adv.store.add_to_round_summary(
            job.job_id, v, {"reduce": {"metrics": reduced[0].metrics, "model_uri": model_uri}}
        )
        self.adv.finisher.round_finished(job)
        if v + 1 >= job.rounds:
            # the job's model: this version, or the average beside it (a model_average)
            params = job.request.strategy.params if job.request.strategy else {}
            self.adv.store.set_final_model(job.job_id, v, final_model_uri(params, str(model_uri)))
            self.adv.finisher.finalize(self.adv.store.get_job(job.job_id), "SUCCEEDED")
            return False
        if self.adv.store.start_round(job.job_id, v + 1, model_uri):
            self.send_waiting(self.adv.store.get_job(job.job_id), deadline=deadline)
        return True


def _update(r: ShardResult, base: int) -> Update:
    """A train outcome as an update not yet placed (state FAILED, or APPLIED to be decided)."""
    return Update(
        client=r.shard_id,
        seq=r.round,
        state=APPLIED if r.status == "succeeded" else FAILED,
        base=base,
        version=-1,
        tau=0,
        weight=0.0,
        num_samples=r.num_samples,
        model_uri=r.model,
        metrics={k: v for k, v in r.metrics.items() if math.isfinite(v)},
        duration_s=r.duration_s,
        error=r.error,
        cost_micro_usd=r.cost_micro_usd,
    )


def first_failure_text(store: Any, job_id: str) -> str:
    """``; first: update n of client c (version v): <its error's first line>`` for the over-budget
    message, the update named as ``watch`` names it (empty when no counted failure says why)."""
    first = FedBuffStore(store).first_failure(job_id)
    if first is None or not first.error:
        return ""
    reason = first.error.strip().splitlines()[0][:300]
    return f"; first: update {first.seq} of client {first.client} (version {first.version}): {reason}"
