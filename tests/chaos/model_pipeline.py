"""Pipelines in the model-based test (issue #26): jobs that wait for another job, and its event.

A follower is submitted ``after`` a job of the world (any kind, any state: a map job cannot be
followed and is refused, naming ``after.use``); the upstream job's ``Job Finished`` event, as
the finisher really published it (``EventTap`` records each ``put_events``), is a command of
its own: delivered to the real pipeline handler (``lambdas.pipeline.followers_of``) in any
order, late, or again (EventBridge delivers at least once). After every step
(``Pipelines.problems``):

12. **a follower starts at most once**: it never returns to WAITING, its resolved request never
    changes, and ``PipelineJobsStarted`` counts each started follower once;
13. **only after its upstream SUCCEEDED**, taking what ``use`` names (the best trial's
    hyperparameters, or the final model as ``model.init_uri``);
14. **a follower that ends without starting says why**: FAILED naming its upstream job, or
    CANCELLED while it waited; nothing of it was enqueued;
15. **never WAITING once its upstream ended and that ending's event was delivered** (or, at
    submit, once its upstream had already ended: the submit acts on it).

At the end of a run every event still owed is delivered (``deliver_owed``), as EventBridge does,
so every follower runs to its end like any other job.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from shardq.core.contracts import ValidationError
from shardq.core.jobstore import JobNotFound, JobRecord
from shardq.core.pipeline_fields import USE_KINDS
from shardq.core.store.pipelines import WAITING
from tests.chaos.model_world import CONTEXT, World

JOB_FINISHED = "Job Finished"


class EventTap:
    """The finisher's EventBridge client: each Job Finished event is published for real and
    recorded (job id, in order) for the model to deliver."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.published: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def put_events(self, Entries: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
        response: dict[str, Any] = self.real.put_events(Entries=Entries, **kw)
        for entry in Entries:
            if entry.get("DetailType") == JOB_FINISHED:
                self.published.append(str(json.loads(entry["Detail"])["job_id"]))
        return response


@dataclass
class Pipelines:
    """The world's followers, the events published and delivered, and what each follower did."""

    world: World
    tap: EventTap
    upstream: dict[str, str] = field(default_factory=dict)  # follower → the job it follows
    use: dict[str, str] = field(default_factory=dict)
    # Upstream job → position in ``tap.published`` up to which its events were delivered.
    delivered: dict[str, int] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)  # follower → status at the last check
    resolved: dict[str, str] = field(default_factory=dict)  # follower → its request once started
    starts: Counter[str] = field(default_factory=Counter)

    @classmethod
    def attach(cls, world: World) -> Pipelines:
        """Tap the world's finisher and count the engine's pipeline metrics."""
        finisher = world.engine.finisher
        tap = EventTap(finisher.events)
        finisher.events = tap
        pipes = cls(world, tap)
        metric = world.engine.metric

        def counted(name: str, value: float, unit: str) -> None:
            pipes.starts[name] += int(value)
            metric(name, value, unit)

        world.engine.metric = counted
        return pipes

    # -- commands -----------------------------------------------------------------------------

    def submit(self, upstream: str, payload: dict[str, Any], use: str) -> str | None:
        """Submit ``payload`` to follow ``upstream``; None when refused (a kind ``use`` cannot take)."""
        engine = self.world.engine
        up = engine.store.get_job(upstream)
        payload = {**payload, "after": {"job_id": upstream, "use": use}}
        if up.kind not in USE_KINDS[use]:
            with pytest.raises(ValidationError, match=f"after.use '{use}' needs an upstream job of kind"):
                engine.submit(payload)
            with pytest.raises(JobNotFound):  # refused: nothing created
                engine.store.get_job(payload["job_id"])
            return None
        answer = engine.submit(payload)
        assert answer["created"], answer
        ended = engine.store.get_job(upstream).terminal
        # Invariant 15 at submit: an upstream that had already ended is acted on by the submit.
        assert (answer["status"] == WAITING) == (not ended), (answer, up.status)
        self.upstream[answer["job_id"]] = upstream
        self.use[answer["job_id"]] = use
        return str(answer["job_id"])

    def deliver(self, index: int) -> str:
        """Deliver one published Job Finished event (any, again or late) to the pipeline handler."""
        from lambdas.pipeline import followers_of

        job_id = self.tap.published[index % len(self.tap.published)]
        followers_of({"detail-type": JOB_FINISHED, "source": "shardq", "detail": {"job_id": job_id}}, CONTEXT)
        self.delivered[job_id] = len(self.tap.published)
        return job_id

    def deliver_owed(self) -> bool:
        """Deliver each ended upstream's latest event not yet delivered; True if there was one."""
        owed = sorted({u for u in self.upstream.values() if not self._delivered(u)})
        owed = [u for u in owed if self.world.engine.store.get_job(u).terminal and u in self.tap.published]
        for upstream in owed:
            self.deliver(len(self.tap.published) - 1 - self.tap.published[::-1].index(upstream))
        return bool(owed)

    def tally(self, seen: Counter[str]) -> None:
        """What the run exercised: followers started, and ended without starting (by status)."""
        for follower in self.upstream:
            job = self.world.engine.store.get_job(follower)
            seen[
                "follower started"
                if job.round_started_at is not None
                else f"follower ended {job.status} unstarted"
            ] += 1

    # -- the promises ---------------------------------------------------------------------------

    def _delivered(self, upstream: str) -> bool:
        """Whether the event of the upstream job's latest ending was delivered after it was published."""
        if upstream not in self.tap.published:
            return False
        latest = len(self.tap.published) - self.tap.published[::-1].index(upstream)
        return self.delivered.get(upstream, 0) >= latest

    def problems(self) -> list[str]:
        """Invariants 12-15 (module docstring) over every follower."""
        store = self.world.engine.store
        problems: list[str] = []
        started = 0
        for follower, upstream in sorted(self.upstream.items()):
            job, up = store.get_job(follower), store.get_job(upstream)
            before, self.status[follower] = self.status.get(follower, WAITING), job.status
            where = f"follower {follower} of {upstream}"
            if before != WAITING and job.status == WAITING:
                problems.append(f"{where}: back to WAITING after {before}")
            if job.status == WAITING:
                if up.terminal and self._delivered(upstream):
                    problems.append(
                        f"{where}: still WAITING after {upstream} ended {up.status} and its event came"
                    )
                continue
            if job.round_started_at is not None:
                started += 1
                problems += [f"{where}: {p}" for p in self._started_problems(job, up)]
            else:
                problems += [f"{where}: {p}" for p in _ended_problems(job, upstream)]
        if self.starts["PipelineJobsStarted"] != started:
            problems.append(
                f"PipelineJobsStarted counted {self.starts['PipelineJobsStarted']} starts, "
                f"{started} followers started"
            )
        return problems

    def _started_problems(self, job: JobRecord, up: JobRecord) -> list[str]:
        if up.status != "SUCCEEDED":
            return [f"started, but its upstream job is {up.status}"]
        request = job.request.to_json()
        if job.job_id in self.resolved:  # what it took was checked when it was first seen started
            if self.resolved[job.job_id] != request:
                return ["its resolved request changed after it started (started twice?)"]
            return []
        self.resolved[job.job_id] = request
        manifest = _manifest(self.world, up)
        best = manifest.get("best") or {}
        if self.use[job.job_id] == "best":
            taken = {k: job.request.hyperparameters.get(k) for k in best.get("hyperparameters", {})}
            if not best or taken != best["hyperparameters"]:
                return [f"took hyperparameters {taken}, its upstream's best trial has {best}"]
            return []
        model = manifest.get("final_model_uri") if up.kind == "data_parallel" else best.get("artifact_uri")
        if not model or job.request.model.get("init_uri") != model:
            return [f"starts from {job.request.model.get('init_uri')}, its upstream's final model is {model}"]
        return []


def _ended_problems(job: JobRecord, upstream: str) -> list[str]:
    """Invariant 14: a follower that left WAITING without starting."""
    problems = []
    if job.status == "CANCELLED":
        if "cancelled while waiting" not in (job.error or ""):
            problems.append(f"CANCELLED without starting, error {job.error!r}")
    elif job.status != "FAILED" or f"upstream job '{upstream}'" not in (job.error or ""):
        problems.append(f"{job.status} without starting, error {job.error!r} (must name '{upstream}')")
    if job.enqueued(0, "train"):
        problems.append(f"never started, yet {job.enqueued(0, 'train')} tasks were enqueued")
    return problems


def _manifest(world: World, job: JobRecord) -> dict[str, Any]:
    assert job.result_uri, f"{job.job_id} SUCCEEDED without a manifest"
    bucket, key = job.result_uri.removeprefix("s3://").split("/", 1)
    return dict(json.loads(world.engine.s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
