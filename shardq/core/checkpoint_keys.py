"""Where a task's checkpoints live in the artifact bucket: one definition for the worker that writes
them and the stack's lifecycle rule that deletes them.

A finished job's checkpoints are not deleted by the aggregator: that would give the Lambdas
ListBucket and DeleteObject on the bucket and one more call per task on the close path. The worker
keeps only the last two of a task, and the lifecycle rule expires the prefix ``EXPIRE_DAYS`` after
the last write, so a job's checkpoints cost at most a week of storage after it ends (``estimate``
counts it).

A checkpoint belongs to the *task*, not to the worker that wrote it: whichever worker receives the
task next finds it under the task's own key. The key names everything that makes two tasks
different (job, round, task type, shard, retry generation), so a checkpoint from another job,
round or retry of the shard is never picked up. An asynchronous sweep's backup copy of a task
(``shardq.core.async_backup``) runs at the same time as the task: it keeps its own checkpoints
beside the task's (``g{generation}-b1/``), so neither copy's "keep the last two" deletes what the
other's pointer names::

    checkpoints/{job_id}/r{round}/{task_type}/s{shard_id}/g{generation}/{step:012d}.tar
    checkpoints/{job_id}/r{round}/{task_type}/s{shard_id}/g{generation}/{step:012d}.json  (manifest)
    checkpoints/{job_id}/r{round}/{task_type}/s{shard_id}/g{generation}/latest.json        (pointer)
"""

from __future__ import annotations

# The top-level prefix: outside ``jobs/`` so the stack's lifecycle rule can expire it on its own.
ROOT = "checkpoints/"
# Days after which the lifecycle rule deletes a checkpoint. A live task rewrites its checkpoint far
# more often than this, so only finished (or abandoned) tasks' checkpoints ever expire.
EXPIRE_DAYS = 7


def job_prefix(job_id: str) -> str:
    """Every checkpoint of a job: ``checkpoints/{job_id}/``."""
    return f"{ROOT}{job_id}/"


def task_prefix(
    job_id: str, round_no: int, task_type: str, shard_id: int, generation: int, backup: int = 0
) -> str:
    """One task's checkpoints: ``checkpoints/{job_id}/r{round}/{task_type}/s{shard}/g{generation}/``
    (a backup copy's: ``…/g{generation}-b{backup}/``)."""
    copy = f"-b{backup}" if backup else ""
    return f"{job_prefix(job_id)}r{round_no}/{task_type}/s{shard_id}/g{generation}{copy}/"


def step_name(step: int) -> str:
    """``{step:012d}``: zero-padded, so the keys list in step order."""
    return f"{step:012d}"
