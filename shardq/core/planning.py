"""Planning: which tasks a round has, computed one index at a time.

Every function here is pure and O(1) per task, so a splitter that resumes at
cursor ``k`` of a 100,000-shard job plans task ``k`` directly instead of
re-planning the first ``k``.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from shardq.core.contracts import ShardTask, TrainingRequest
from shardq.core.search import trial_params


def expand_grid(search_space: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
    """All trials of a grid, in order (reference implementation for ``trial``)."""
    names = list(search_space)
    for combo in itertools.product(*(search_space[n] for n in names)):
        yield dict(zip(names, combo, strict=True))


def shard_range(num_items: int, shard_count: int, shard_id: int) -> tuple[int, int]:
    """Half-open ``[start, end)`` of shard ``shard_id`` when ``num_items`` split into ``shard_count``.

    Sizes differ by at most one; the first ``num_items % shard_count`` shards get the extra item.
    """
    base, extra = divmod(num_items, shard_count)
    start = shard_id * base + min(shard_id, extra)
    return start, start + base + (1 if shard_id < extra else 0)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → ``(bucket, key)``; ValueError for anything else."""
    bucket, sep, key = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket or not sep:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return bucket, key


def participant_count(request: TrainingRequest, round_no: int) -> int:
    """How many shards train in round ``round_no``: all, or ``participation``'s sample size."""
    n = request.task_count
    p = request.participation
    if p is None:
        return n
    return min(n, max(p.min_shards, math.ceil(p.fraction * n - 1e-9)))


def participants(request: TrainingRequest, round_no: int) -> Sequence[int]:
    """The shards that train in round ``round_no``, ascending.

    Without ``participation``, every shard. With it, the ``participant_count`` shards whose
    SHA-256 of ``seed:round:shard`` ranks lowest: deterministic on every interpreter and platform
    (unlike ``random``'s algorithms), so a retried or resumed round picks the same set.
    """
    n = request.task_count
    k = participant_count(request, round_no)
    if k == n:
        return range(n)
    assert request.participation is not None
    seed = request.participation.seed

    def rank(shard: int) -> bytes:
        return hashlib.sha256(f"{seed}:{round_no}:{shard}".encode()).digest()

    return sorted(heapq.nsmallest(k, range(n), key=rank))


def lane(shard_id: int, max_parallel: int) -> int:
    """The FIFO lane (message group) of a shard: round-robin over ``max_parallel`` lanes."""
    return shard_id % max_parallel


def group_id(task: ShardTask, max_parallel: int) -> str:
    """``MessageGroupId`` of a task: ``job:r<round>:<lane>``, or ``job:r<round>:reduce``.

    One group per lane, so a job runs ``max_parallel`` train tasks at once. The round is part
    of the group because a FIFO group hands out nothing while a message of it is in flight: a
    straggler still running after its round closed (quorum, deadline) would otherwise hold its
    lane in every later round, and the reduce would queue behind whichever shard shares its lane.
    """
    if task.task_type == "reduce":
        return f"{task.job_id}:r{task.round}:reduce"
    return f"{task.job_id}:r{task.round}:{lane(task.shard_id, max_parallel)}"


def dedup_id(task: ShardTask, generation: int = 0) -> str:
    """``MessageDeduplicationId``; a retry of a failed shard uses a new generation, a sweep's backup
    copy of a straggling task (``ShardTask.backup``) its own suffix, so neither is dropped as the
    first send's duplicate within the queue's 5-minute window."""
    base = task.key if generation == 0 else f"{task.key}:g{generation}"
    return f"{base}:b{task.backup}" if task.backup else base


class Layout(NamedTuple):
    """Where a job's objects live in the artifact bucket.

    A named tuple rather than a frozen dataclass: as immutable, and defined ≈ 0.4 ms faster at
    every Lambda's cold start (a dataclass compiles six generated methods; BENCHMARKS.md, section 1).
    """

    bucket: str
    job_id: str

    @property
    def prefix(self) -> str:
        """``s3://bucket/jobs/<job_id>/``."""
        return f"s3://{self.bucket}/jobs/{self.job_id}/"

    def key(self, *parts: str) -> str:
        """An object key under the job's prefix."""
        return "/".join(("jobs", self.job_id, *parts))

    def uri(self, *parts: str) -> str:
        """An ``s3://`` URI under the job's prefix."""
        return f"s3://{self.bucket}/{self.key(*parts)}"

    def shard_output(self, round_no: int, shard_id: int, backup: int = 0) -> str:
        """Output prefix of one train task (a backup copy's beside it, ``shard-…-b1/``: the copy
        that loses never overwrites the model a promotion continues from)."""
        name = f"shard-{shard_id:06d}" + (f"-b{backup}" if backup else "")
        return self.uri(f"round-{round_no:04d}", name) + "/"

    def reduce_output(self, round_no: int) -> str:
        """Output prefix of a round's reduce task (the round's global model)."""
        return self.uri(f"round-{round_no:04d}", "reduce") + "/"

    def reduce_inputs_key(self, round_no: int) -> str:
        """Claim check with the round's shard models and weights."""
        return self.key(f"round-{round_no:04d}", "reduce-inputs.json")

    def task_payload_key(self, round_no: int, task_type: str, shard_id: int, backup: int = 0) -> str:
        """Claim check holding a task body too big to travel in its message (a backup copy's its own)."""
        name = f"{task_type}-{shard_id:06d}" + (f"-b{backup}" if backup else "")
        return self.key(f"round-{round_no:04d}", "tasks", f"{name}.json")

    def manifest_key(self) -> str:
        """The job's result manifest."""
        return self.key("result.json")


def train_task(
    request: TrainingRequest,
    job_id: str,
    layout: Layout,
    round_no: int,
    index: int,
    init_model_uri: str | None,
    params: dict[str, Any] | None = None,
    backup: int = 0,
) -> ShardTask:
    """Task ``index`` of round ``round_no``: a data shard, or a trial for a sweep.

    ``params``: a sweep trial's hyperparameters when something other than the request decided them
    (an asynchronous sweep's trial source, ``shardq.core.async_sweep``); else ``trial_params``.
    ``backup``: 1 for a sweep's backup copy of the task (``shardq.core.async_backup``)."""
    total = request.task_count
    if not 0 <= index < total:
        raise IndexError(f"task index {index} outside 0..{total - 1}")
    ds = request.dataset
    hyper = dict(request.hyperparameters)
    data: dict[str, Any] = {"uri": ds.uri} if ds.uri else {}
    if request.kind == "sweep":
        hyper.update(trial_params(request, index) if params is None else params)
        if request.early_stopping is not None:
            # What this rung adds: a promoted trial resumes from its model (init_model_uri), so
            # training the increment brings it to the rung's total budget.
            budgets = request.early_stopping.budgets
            hyper[request.early_stopping.budget_param] = budgets[round_no] - (
                budgets[round_no - 1] if round_no else 0
            )
        # A trial trains on the whole dataset.
        if ds.files is not None:
            data["files"] = list(ds.files)
        else:
            data.update(start=0, end=ds.num_samples)
    else:
        start, end = shard_range(ds.size, total, index)
        if ds.files is not None:
            data["files"] = list(ds.files[start:end])
        else:
            data.update(start=start, end=end)
    return ShardTask(
        job_id=job_id,
        round=round_no,
        shard_id=index,
        shard_count=total,
        task_type="train",
        kind=request.kind,
        entrypoint=request.entrypoint,
        data=data,
        hyperparameters=hyper,
        output_prefix=layout.shard_output(round_no, index, backup),
        init_model_uri=init_model_uri,
        model=request.model,
        timeout_s=request.task_timeout_seconds,
        strategy=request.strategy.to_dict() if request.strategy else {},
        backup=backup,
    )


def reduce_task(
    request: TrainingRequest, job_id: str, layout: Layout, round_no: int, global_model_uri: str | None = None
) -> ShardTask:
    """The reduce task of a ``data_parallel`` round: combine the shard models it lists.

    It starts from the round's global model (``init_model_uri``; a server strategy steps from it)
    and, after round 0, from the server state the previous reduce kept (``data.server_state_uri``).
    It carries the job's evaluation dataset (``request.evaluation``), which the reduce's
    ``evaluate_global`` hook scores the new global model on.
    """
    data = {"server_state_uri": layout.reduce_output(round_no - 1) + "server_state.npz"} if round_no else {}
    return ShardTask(
        job_id=job_id,
        round=round_no,
        shard_id=0,
        shard_count=1,
        task_type="reduce",
        kind=request.kind,
        entrypoint=request.entrypoint,
        data=data if request.strategy else {},
        hyperparameters=dict(request.hyperparameters),
        output_prefix=layout.reduce_output(round_no),
        init_model_uri=global_model_uri if request.strategy else None,
        inputs_uri=f"s3://{layout.bucket}/{layout.reduce_inputs_key(round_no)}",
        model=request.model,
        timeout_s=request.task_timeout_seconds,
        strategy=request.strategy.to_dict() if request.strategy else {},
        eval_dataset=request.evaluation.to_dict() if request.evaluation else None,
    )
