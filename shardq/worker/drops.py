"""Tasks a worker deletes unrun: their job was cancelled or finished, or their round closed, or (an
asynchronous sweep's backup copy of a straggling task) the task's outcome is already recorded.

Read through ``JobStore.state_of`` (one GetItem) before a task runs, and for a backup copy one more
(``JobStore.outcome_recorded``); see ``drop_reason``.
"""

from __future__ import annotations

import logging

from shardq.core.contracts import ShardTask
from shardq.core.jobstore import JobStore
from shardq.core.spend import BUDGET_DROP
from shardq.worker.aws import describe, is_fatal


def drop_reason(store: JobStore | None, task: ShardTask, tlog: logging.LoggerAdapter) -> str | None:
    """Why the task need not run, or None: its job is cancelled (or being cancelled) or finished, or
    its budget is spent (``BUDGET_DROP``), or (a ``data_parallel`` train task) its round already
    closed, so its result would only be late.

    Unknown after a transient error: run the task (the aggregator ignores results of a finished
    job and records late ones), rather than drop or stall it.
    """
    if store is None:
        return None
    try:
        # Eventually consistent: a stale read only runs a task the aggregator then ignores.
        job = store.state_of(task.job_id)
    except Exception as exc:
        if is_fatal(exc):
            raise
        tlog.warning("job status unknown (%s); running the task", describe(exc))
        return None
    if job is None:
        return None
    if job.terminal:
        return f"job is {job.status}"
    if job.cancelling:
        return "job is being cancelled"
    if job.budget_spent:
        if task.backup:
            # A backup copy is no task of its own (never counted out, ``async_backup``): its drop
            # must count nothing, or the spend guard would take its task for answered while the
            # original still runs, and end the job before that outcome comes back.
            return "the budget is spent (a backup copy: nothing to count)"
        return BUDGET_DROP  # the worker says so on the results queue (spend.Dropped)
    if task.backup and _recorded(store, task, tlog):
        return "its outcome is already recorded (the other copy reported first)"
    if task.task_type != "train" or task.kind != "data_parallel":
        return None
    if task.strategy.get("name") == "fedbuff":
        return None  # a FedBuff update's "round" is its client's update number: no round closes it
    if job.round > task.round:
        return f"job moved on to round {job.round}"
    if job.closed_round is not None and job.closed_round >= task.round:
        return f"round {task.round} already closed"
    return None


def _recorded(store: JobStore, task: ShardTask, tlog: logging.LoggerAdapter) -> bool:
    """Whether a backup copy's task already has its outcome (False when unknown: run it)."""
    try:
        return store.outcome_recorded(task.job_id, task.round, task.shard_id)
    except Exception as exc:
        if is_fatal(exc):
            raise
        tlog.warning("outcome of %s unknown (%s); running the backup copy", task.key, describe(exc))
        return False
