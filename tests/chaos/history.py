"""The history checker: after a job, read everything it left behind and verify shardq's promises.

It reads the job record, every outcome item, the round summaries, the result manifest, the
four queues (task, results and both DLQs) and, when given, the workers' training log, and
checks:

1. every planned (round, phase, shard) has exactly one outcome item, or — for a job that did
   not succeed — is accounted for (failed, or never reached because the job ended); no item
   exists for a task that was never planned (a foreign or invented shard);
2. nothing is counted twice: each ``ok_*``/``fail_*`` counter and ``failed_total`` equals
   the number of outcome items it counts (counter and item share one transaction, so a
   duplicate that slipped through would show up as a counter above its items);
3. each round summary equals the num_samples-weighted mean of exactly the recorded results
   of that round, recomputed here independently of ``shardq.core.metrics``;
4. the manifest agrees with the table: status, failures, round summaries, final model;
   the ``Job Finished`` event was sent (no ``event_pending`` left on the job);
5. no message is in flight or lost: the task and results queues are empty, the results DLQ
   is empty, and every task in the task DLQ is recorded as failed on the job;
6. every succeeded train outcome comes from a training that ran to its end (training log);
7. every worker process ended with an exit code the scenario allows (when the exit codes are
   given; by default only 0): a transient AWS error never ends a worker, a fatal one says so
   (4), and no worker exits 0 while its slots are dead;
8. every succeeded outcome of a data_parallel job names its model file (``model_uri``, or the
   ``artifact_uri`` of a result that predates it), and a reduce's artifact is its model;
9. rounds that do not wait for everyone: a round plans its participants (``participation``) or
   a rung its promoted trials, and outcomes exist for planned tasks only; a round that closed
   early (``quorum``) counted at least its quorum (or, at its deadline, ``min_shards``), and
   every result that came after the close is a late item — never also counted, never for a
   task the round did not plan;
10. a retried shard is never failed by an older copy of its task: a failure whose generation is
    below the shard's retry mark (``shardq retry``) is a late item, and only such a stale failure
    may sit beside the shard's counted outcome.

``check`` returns the list of violations; ``assert_history`` fails with all of them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardq.core.contracts import ShardTask
from shardq.core.engine import Engine
from shardq.core.jobstore import JobRecord, ResultRecord
from shardq.local.resources import dlq_urls
from tests.chaos.harness import trainings
from tests.helpers import count_messages


@dataclass
class History:
    """Everything a job left behind."""

    job: JobRecord
    outcomes: list[ResultRecord]
    summaries: list[dict[str, Any]]
    manifest: dict[str, Any] | None
    queues: dict[str, int]
    late: list[ResultRecord] = field(default_factory=list)
    # (round, phase) → shard → the latest retry generation that sent it again (retry marks)
    retried: dict[tuple[int, str], dict[int, int]] = field(default_factory=dict)
    # round → the train tasks it planned (participants, or a rung's promoted trials)
    plans: dict[int, list[int]] = field(default_factory=dict)
    dead_tasks: list[ShardTask] = field(default_factory=list)
    trainings: list[dict[str, Any]] = field(default_factory=list)
    exit_codes: list[int] | None = None

    def items(self, round_no: int, phase: str) -> list[ResultRecord]:
        """Outcome items of one (round, phase)."""
        return [o for o in self.outcomes if o.result.round == round_no and o.result.task_type == phase]


def collect(
    engine: Engine, job_id: str, chaos_dir: Path | None = None, exit_codes: list[int] | None = None
) -> History:
    """Read the job's whole history from the table, the bucket and the queues (and, when given,
    the workers' training log and exit codes)."""
    sqs, s = engine.sqs, engine.settings
    job = engine.store.get_job(job_id)
    manifest = None
    if job.result_uri:
        key = job.result_uri.split("/", 3)[3]
        manifest = json.loads(engine.s3.get_object(Bucket=s.artifact_bucket, Key=key)["Body"].read())
    dlqs = dlq_urls(sqs, s)
    queues = {
        "tasks": count_messages(sqs, s.task_queue_url),
        "results": count_messages(sqs, s.results_queue_url),
        "tasks_dlq": count_messages(sqs, dlqs["tasks"]),
        "results_dlq": count_messages(sqs, dlqs["results"]),
    }
    dead: list[ShardTask] = []
    if queues["tasks_dlq"]:
        # Peek (visibility 0): the messages stay where they are.
        got = sqs.receive_message(QueueUrl=dlqs["tasks"], MaxNumberOfMessages=10, VisibilityTimeout=0)
        dead = [ShardTask.from_json(m["Body"]) for m in got.get("Messages", [])]
    return History(
        job=job,
        outcomes=engine.store.all_results(job_id),
        late=engine.store.late_results(job_id),
        retried={
            (r, ph): engine.store.retried_generations(job_id, r, ph)
            for r in range(_last_round(job) + 1)
            for ph in ("train", "reduce")
        },
        plans={r: _planned(engine, job, r) for r in range(_last_round(job) + 1)},
        summaries=engine.store.round_summaries(job_id),
        manifest=manifest,
        queues=queues,
        dead_tasks=dead,
        trainings=trainings(chaos_dir, job_id) if chaos_dir else [],
        exit_codes=None if exit_codes is None else list(exit_codes),
    )


def _last_round(job: Any) -> int:
    """The last round the job reached: an asynchronous sweep runs every rung at once."""
    return int(job.rounds) - 1 if job.request.asynchronous else int(job.round)


def _planned(engine: Engine, job: Any, r: int) -> list[int]:
    """Round ``r``'s planned shards: the stored plan, or an asynchronous sweep's decisions."""
    if job.request.asynchronous:
        return sorted(d.trial for d in engine.store.sweep_decisions(job.job_id, r))
    return [shard for shard, _ in engine.store.planned_tasks(job, r, "train")]


def _phases(h: History) -> list[tuple[int, str, list[int]]]:
    """(round, phase, planned shards) of every phase the job reached, in order."""
    job = h.job
    last_round, last_phase = _last_round(job), job.phase
    out = []
    for r in range(last_round + 1):
        out.append((r, "train", h.plans.get(r, list(range(job.task_count)))))
        if job.kind == "data_parallel" and (r < last_round or last_phase == "reduce"):
            out.append((r, "reduce", [0]))
    return out


def _closed_early(h: History, r: int) -> bool:
    """True when round ``r``'s training may have closed before every participant reported."""
    return h.job.request.quorum is not None and h.job.closed_round is not None and h.job.closed_round >= r


def _stale(h: History, result: Any) -> bool:
    """True for a failure older than its shard's retry (late by design, beside the retried outcome)."""
    mark = h.retried.get((result.round, result.task_type), {}).get(result.shard_id, 0)
    return bool(result.status == "failed" and result.generation < mark)


def _quorum_problems(h: History, phases: list[tuple[int, str, list[int]]]) -> list[str]:
    """Invariant 9 for rounds that closed early, and for every late item."""
    p: list[str] = []
    request = h.job.request
    counted = {(o.result.round, o.result.task_type, o.result.shard_id) for o in h.outcomes}
    planned = {(r, ph, s) for r, ph, shards in phases for s in shards}
    for o in h.outcomes:
        r = o.result
        mark = h.retried.get((r.round, r.task_type), {}).get(r.shard_id, 0)
        if r.status == "failed" and r.generation < mark:
            p.append(f"{r.key} failed by a stale copy (generation {r.generation}) after its retry {mark}")
    for o in h.late:
        k = (o.result.round, o.result.task_type, o.result.shard_id)
        if k in counted and not _stale(h, o.result):
            p.append(f"{k} is both counted and late")
        if k not in planned:
            p.append(f"late item for a task that was never planned: {k}")
    for r, ph, shards in phases:
        if ph != "train" or not _closed_early(h, r):
            continue
        items = h.items(r, ph)
        if len(items) == len(shards):
            continue  # everyone reported: the round closed the ordinary way
        ok = sum(1 for o in items if o.result.status == "succeeded")
        quorum = request.quorum
        assert quorum is not None
        need = math.ceil(quorum.fraction * len(shards) - 1e-9)
        if quorum.deadline_seconds is not None:  # or it closed at its deadline with min_shards
            need = min(need, request.participation.min_shards if request.participation else 1)
        if ok < need:
            p.append(f"round {r} closed with {ok} successes, below its quorum/minimum {need}")
    return p


def _weighted(results: list[dict[str, Any]]) -> dict[str, float]:
    ok = [r for r in results if r["status"] == "succeeded"]
    names = sorted({n for r in ok for n in r["metrics"]})
    out = {}
    for n in names:
        rows = [(r["metrics"][n], r["num_samples"]) for r in ok if n in r["metrics"]]
        w = sum(x for _, x in rows)
        out[n] = sum(v * x for v, x in rows) / w if w else sum(v for v, _ in rows) / len(rows)
    return out


def check(
    h: History,
    *,
    status: str,
    trained: bool = True,
    allow_results_dlq: int = 0,
    exits: tuple[int, ...] = (0,),
) -> list[str]:
    """Every violation of the invariants in the module docstring (empty when the history is sound)."""
    p: list[str] = []
    job = h.job
    if job.status != status:
        p.append(f"job status {job.status} (error {job.error!r}), expected {status}")
    phases = _phases(h)
    planned = {(r, ph, s) for r, ph, shards in phases for s in shards}
    seen: dict[tuple[int, str, int], int] = {}
    for o in h.outcomes:
        res = o.result.to_dict()
        k = (res["round"], res["task_type"], res["shard_id"])
        seen[k] = seen.get(k, 0) + 1
        if k not in planned:
            p.append(f"outcome for a task that was never planned: {k}")
    p += [f"{k} recorded {n} times" for k, n in seen.items() if n > 1]
    # 1. completeness: a finished phase has every outcome; a succeeded job finished them all
    for r, ph, shards in phases:
        have = {s for (rr, pp, s) in seen if (rr, pp) == (r, ph)}
        # An asynchronous sweep runs its rungs at once: one that ended FAILED or CANCELLED may
        # leave decided tasks of any rung without an outcome (dropped unrun once it ended).
        finished = status == "SUCCEEDED" or (
            not job.request.asynchronous and (r, ph) != (int(job.round), job.phase)
        )
        if ph == "train" and _closed_early(h, r):
            continue  # invariant 9 checks a round that closed at its quorum
        if finished and have != set(shards):
            p.append(f"round {r} {ph}: outcomes for {sorted(have)}, expected all of {sorted(shards)}")
    if status == "SUCCEEDED" and job.kind == "data_parallel" and int(job.round) != int(job.rounds) - 1:
        p.append(f"job SUCCEEDED in round {job.round} of {job.rounds}")
    # 2. counters equal items
    failed_train = 0
    p += _quorum_problems(h, phases)
    for r, ph, _ in phases:
        items = h.items(r, ph)
        ok = sum(1 for o in items if o.result.status == "succeeded")
        # A diverged sweep trial ended (it counts as neither a success nor a failure).
        div = sum(1 for o in items if o.result.status == "diverged")
        bad = len(items) - ok - div
        if ph == "train":
            failed_train += bad
        for name, have, want in (
            ("ok", job.ok(r, ph), ok),
            ("fail", job.failed(r, ph), bad),
            ("diverged", job.diverged(r, ph), div),
        ):
            if have != want:
                p.append(f"counter {name} r{r} {ph}={have} but {want} outcome items: counted twice or lost")
    if int(job.failed_total) != failed_train:
        p.append(f"failed_total={job.failed_total} but {failed_train} failed train items")
    # 3. round summaries = weighted mean of exactly the recorded results
    for summary in h.summaries:
        r = summary["round"]
        results = [o.result.to_dict() for o in h.items(r, "train")]
        ok = [x for x in results if x["status"] == "succeeded"]
        div = sum(1 for x in results if x["status"] == "diverged")
        if (
            summary["shards_succeeded"] != len(ok)
            or summary["shards_failed"] != len(results) - len(ok) - div
            or summary.get("shards_diverged", 0) != div
        ):
            p.append(
                f"round {r} summary counts {summary['shards_succeeded']}/{summary['shards_failed']} != items"
            )
        if summary["num_samples"] != sum(x["num_samples"] for x in ok):
            p.append(f"round {r} summary num_samples {summary['num_samples']} != recorded")
        want = _weighted(results)
        got = {n: m["mean"] for n, m in summary["metrics"].items()}
        if sorted(got) != sorted(want) or any(not math.isclose(got[n], want[n], rel_tol=1e-12) for n in want):
            p.append(f"round {r} metrics {got} != weighted mean of recorded results {want}")
    # 4. the manifest agrees with the table
    if status in ("SUCCEEDED", "FAILED", "CANCELLED"):
        m = h.manifest
        if m is None:
            p.append("no result manifest")
        else:
            if m["status"] != job.status:
                p.append(f"manifest status {m['status']} != job {job.status}")
            failed_items = sorted(
                (o.result.round, o.result.task_type, o.result.shard_id)
                for o in h.outcomes
                if o.result.status == "failed"
            )
            listed = sorted((f["round"], f["task_type"], f["shard_id"]) for f in m["failed"])
            if listed != failed_items:
                p.append(f"manifest lists failures {listed}, table has {failed_items}")
            if m["rounds"] != h.summaries:
                p.append("manifest round summaries differ from the table's")
            if (
                job.kind == "data_parallel"
                and status == "SUCCEEDED"
                and m["final_model_uri"] != job.model_uri
            ):
                p.append(f"manifest model {m['final_model_uri']} != job model {job.model_uri}")
        if job.event_pending:
            p.append("the Job Finished event was never sent (event_pending still set)")
    # 5. no message in flight or lost
    for q in ("tasks", "results"):
        if h.queues[q]:
            p.append(f"{h.queues[q]} message(s) left on the {q} queue")
    if h.queues["results_dlq"] != allow_results_dlq:
        p.append(f"{h.queues['results_dlq']} result(s) in the results DLQ, expected {allow_results_dlq}")
    failed_keys = {
        k
        for k, o in ((tuple((o.result.round, o.result.task_type, o.result.shard_id)), o) for o in h.outcomes)
        if o.result.status == "failed"
    }
    for t in h.dead_tasks:
        if t.job_id == job.job_id and (t.round, t.task_type, t.shard_id) not in failed_keys:
            p.append(f"dead task {t.key} is not recorded as failed on the job")
    # 6. every succeeded train outcome was really trained
    if trained and h.trainings:
        ended = {(t["round"], t["shard"]) for t in h.trainings if t["event"] == "end"}
        for o in h.outcomes:
            res = o.result.to_dict()
            if (
                res["task_type"] == "train"
                and o.result.status == "succeeded"
                and (res["round"], res["shard_id"]) not in ended
            ):
                p.append(
                    f"recorded success of round {res['round']} shard {res['shard_id']} "
                    "with no finished training"
                )
    # 7. the workers' exit codes tell the truth
    if h.exit_codes is not None:
        wrong = [c for c in h.exit_codes if c not in exits]
        if wrong:
            p.append(f"worker exit codes {wrong} (all: {h.exit_codes}), expected only {list(exits)}")
    # 8. the model of each succeeded data_parallel outcome is explicit
    if job.kind == "data_parallel":
        for o in h.outcomes:
            r = o.result
            if r.status != "succeeded":
                continue
            if not r.model or r.model.endswith("/"):
                p.append(
                    f"{r.key} succeeded with no model file "
                    f"(model_uri {r.model_uri}, artifact {r.artifact_uri})"
                )
            elif r.task_type == "reduce" and r.artifact_uri != r.model:
                p.append(f"{r.key}: the reduce's artifact {r.artifact_uri} is not its model {r.model}")
    return p


def assert_history(h: History, **expect: Any) -> None:
    """Fail with every violation at once."""
    problems = check(h, **expect)
    assert not problems, "history violations:\n  " + "\n  ".join(problems)
