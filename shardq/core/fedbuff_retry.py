"""``shardq retry`` of a FedBuff job: forgive its failed updates and set every client going again.

A FedBuff job has no round of failed shards to train again: a failed update already moved its
client on to its next update (``shardq.core.fedbuff``), so what a retry of a job FAILED over its
failure budget (or by a failed reduce) must do is

1. **forgive** the failed updates recorded so far: they stay recorded (and listed), but the
   budget counts the failures after the retry (``FedBuffStore.forgive``: ``failed_total`` back to
   0, ``fb_forgive_seq`` the updates recorded so far; the over-budget message then names the first
   failure since). A failed reduce's outcome is forgotten as any retried task's
   (``JobStore.forget_failures``), so its new one counts;
2. bring the job back to RUNNING (``Engine.reopen``);
3. send each client's task that the failure cut off, under a fresh retry generation (a new
   deduplication id: the first copy was dropped unrun by its worker once the job failed, or may
   still be queued; then its second result is a duplicate, recorded once): the task after the
   client's latest update (from the base version fixed for it when a slot went to it), its first
   task when it got one (the fan-out's or a slot's) and has no update yet, or the update that
   arrived while the job was FAILED (kept ``after_end``, never counted: forgotten and trained
   again). A slot handed before a crash, its task never marked sent, is marked sent with this
   copy (a redelivery of its giver's outcome then sends nothing). An update whose freed slot was
   never handed on hands it now (or waits for the next version, as usual), so the job keeps its
   slots; the reduce of a version whose reduce failed or was cut off goes out again;
4. advance the job.

Each step is safe to repeat: a retry that died midway (the job RUNNING again, some tasks unsent)
is run again (``fb_retrying`` on the job says so), and sends duplicates at worst.
"""

from __future__ import annotations

from dataclasses import replace

from shardq.core import planning
from shardq.core.engine import Engine
from shardq.core.fedbuff import Driver
from shardq.core.jobstore import JobRecord
from shardq.core.store.fedbuff import AFTER_END, FedBuffStore, Update


class NothingToRetry(ValueError):
    """The job has no failed update, failed reduce or unfinished retry."""


def retry(engine: Engine, job: JobRecord) -> tuple[int, list[int]]:
    """Retry a FAILED or RUNNING FedBuff job (module docstring); returns (generation, the clients
    whose task went out again). Raises ``NothingToRetry`` or ``JobChanged``."""
    store, fb = engine.store, FedBuffStore(engine.store)
    failed_reduce = [r for r in store.results(job.job_id, job.round, "reduce") if r.result.status == "failed"]
    unfinished = fb.retrying(job.job_id)
    if job.status == "RUNNING" and job.failed_total == 0 and not failed_reduce and not unfinished:
        raise NothingToRetry(
            f"job {job.job_id} is RUNNING with no failed update to retry; see `shardq status`"
        )
    generation = store.next_retry_generation(job.job_id, job.status)
    fb.mark_retrying(job.job_id, generation)
    fb.forgive(job.job_id, job.status)
    if failed_reduce and job.phase == "reduce":
        spent = sum(r.result.cost_micro_usd for r in failed_reduce)
        store.forget_failures(job, [0], generation, spent)
    if job.status == "FAILED":
        engine.reopen(job.job_id)
    job = store.get_job(job.job_id)
    if job.phase == "reduce" and job.done(job.round, "reduce") == 0:
        body = failed_reduce[0].task_body if failed_reduce else None
        engine.enqueuer.resend(job, {0: body}, generation)
    clients = _restart_clients(engine, job, generation)
    fb.mark_retrying(job.job_id, None)
    return generation, clients


def _restart_clients(engine: Engine, job: JobRecord, generation: int) -> list[int]:
    """Send each client's cut-off task again (step 3); the clients sent to."""
    fb, driver = FedBuffStore(engine.store), Driver(engine.advancer)
    latest: dict[int, Update] = {}
    every = fb.all_updates(job.job_id)
    for update in every:
        if update.client not in latest or update.seq > latest[update.client].seq:
            latest[update.client] = update
    planned = [shard for shard, _ in engine.store.planned_tasks(job, 0, "train")]
    wave = job.first_wave()  # the fan-out's clients, then the first tasks slots went to
    first_sent = {
        *planned[: job.enqueued(0, "train")],
        *planned[wave : wave + job.counters.get(("usent", 0, "train"), 0)],
    }
    firsts = fb.first_bases(job.job_id, first_sent)
    waiting = fb.counts(job.job_id).waiting
    again: dict[int, tuple[int, int]] = {}  # client → (update number, base version)
    for client in range(job.task_count):
        u = latest.get(client)
        if u is None:
            if client in first_sent:
                again[client] = (0, firsts.get(client, 0))
        elif u.state == AFTER_END:
            fb.drop_after_end(job.job_id, client, u.seq)
            again[client] = (u.seq, u.base)
        elif u.next_base is not None:
            again[client] = (u.seq + 1, u.next_base)
    # the slots freed and not handed on (nor waiting for the next version): handed now
    unsent = [u for u in every if u.slot is None and u.state != AFTER_END and u.name not in waiting]
    layout = planning.Layout(engine.advancer.bucket, job.job_id)
    models: dict[int, str | None] = {}
    tasks = []
    for client, (seq, base) in sorted(again.items()):
        if base not in models:
            models[base] = driver.model_of(job, base)
        task = planning.train_task(job.request, job.job_id, layout, seq, client, models[base])
        tasks.append(replace(task, generation=generation))
    enqueuer = engine.enqueuer
    enqueuer.fanout.send(enqueuer.message(t, job.request.max_parallel, generation) for t in tasks)
    # A slot handed before a crash and its task never marked sent: that task just went out (under
    # this generation), so mark it, or a redelivery of the giver's outcome would send it again.
    givers = {u.slot: u for u in every if u.slot is not None and not u.next_sent}
    for client, (seq, _) in again.items():
        giver = givers.get(f"{client}:{seq}")
        if giver is not None:
            fb.mark_sent(job.job_id, giver.client, giver.seq)
    driver.follow_up(job.job_id, unsent)
    return sorted({*again, *(u.client for u in unsent)})
