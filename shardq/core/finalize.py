"""Finalize: write a job's result manifest, end it once, publish ``Job Finished`` once.

Two finishers may race (the last result and a cancel, or two aggregator invocations): the
transition is a conditional write, so one wins; the manifest is deterministic for a given set
of recorded outcomes, and a loser that overwrote the winner's manifest puts back the one that
matches the job's final status.

The manifest does not grow with the shard count: the recorded outcomes are read in one pass,
page by page, and the lists that grow with the job
— a map job's outputs and every job's failures — go to JSON Lines part files next to the manifest
(``jobs/<job>/manifest/<list>-00000.jsonl``, ``PART_LINES`` lines each, written one at a
time); the manifest keeps the first ``INLINE_MAX`` entries of each list inline, their count,
and the parts' URIs (schema version 2). A million map outputs are ≈ 20 parts of ≈ 7 MB and a
manifest of a few KB, instead of one JSON document of ≈ 200 MB built in memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shardq.core import fedbuff_view, planning, spend
from shardq.core.artifacts import put_json
from shardq.core.contracts import ShardResult
from shardq.core.jobstore import JobRecord, JobStore, ResultRecord
from shardq.core.metrics import MetricsAccumulator, RoundAccumulator
from shardq.core.search import sweep_section

# A crashed event publisher's claim is taken over after this long.
EVENT_CLAIM_LEASE_S = 60.0
MANIFEST_SCHEMA_VERSION = 2
# Entries of a growing list (outputs, failures) the manifest holds inline; all are in the parts.
INLINE_MAX = 1_000
# Lines per JSON Lines part file: ≈ 7 MB of map outputs, the most the finalizer holds at once.
PART_LINES = 50_000
# A close range asks whether to stop (its invocation's time is nearly up) every this many rows.
STOP_CHECK_ROWS = 500

MetricSink = Callable[[str, float, str], None]
# Writes one part file: (key, body) → its s3:// URI.
PartPut = Callable[[str, bytes], str]


def round_seconds(job: JobRecord, now: float) -> float | None:
    """Seconds since the job's current round started (None when it has no start time)."""
    if not job.round_started_at:
        return None
    begun = datetime.fromisoformat(job.round_started_at.replace("Z", "+00:00")).timestamp()
    return max(0.0, now - begun)


def data_parallel_rows(
    store: JobStore, job: JobRecord
) -> tuple[Iterable[ResultRecord], str | None, set[str]]:
    """What a data-parallel manifest reads: its failed outcomes (every round, in key order), the
    latest recording time among the outcomes that can hold it, and the code versions those outcomes
    carry (every reduce's and the current round's shards': the code that made the final model).

    The manifest lists failures and the job's ``finished_at`` (its latest recorded outcome), nothing
    per successful shard; reading every outcome would cost shards × rounds in the invocation that
    ends the job. A round's train outcomes are all recorded before its reduce is sent (the round is
    closed first; later ones are kept apart as late), so the latest time is among the reduces and
    the job's current round. Reads: a filtered query (DynamoDB drops the successes), one
    ``BatchGetItem`` per 100 rounds and the current round's ≤ ``MAX_GATHERED_TASKS`` outcomes.
    """
    read = store.reduce_results(job.job_id, job.round + 1)
    read += store.iter_results(job.job_id, job.round)
    latest = max((r.recorded_at for r in read), default=None)
    versions = {r.result.code_version for r in read if r.result.code_version}
    return store.iter_results(job.job_id, only_failed=True), latest, versions


class PartWriter:
    """One growing list of the manifest: its first ``inline_max`` entries, its count, its parts.

    Entries are written as JSON Lines (sorted keys, compact) into part files of ``part_lines``
    lines, each put as soon as it is full, so memory is one part however long the list.

    Parameters
    ----------
    name:
        The list's name in the manifest (``outputs``, ``failed``).
    put:
        Writes a part: ``(key, body) → uri``.
    layout:
        The job's artifact layout (parts go under ``jobs/<job>/manifest/``).
    """

    def __init__(
        self,
        name: str,
        put: PartPut,
        layout: planning.Layout,
        *,
        inline_max: int | None = None,
        part_lines: int | None = None,
        by_span: bool = False,
        written: dict[str, Any] | None = None,
    ) -> None:
        self.name, self.put, self.layout = name, put, layout
        # Part files are ``<name>-00000.jsonl``…; with ``by_span`` (a close range) they are named
        # by their first and last shard, so a name always means the same content, whoever
        # writes it: two invocations of one range that stop at different shards never
        # overwrite each other's part with other lines.
        self.by_span = by_span
        # Read at run time (not bound as defaults) so the module's limits can be changed.
        self.inline_max = INLINE_MAX if inline_max is None else inline_max
        self.part_lines = PART_LINES if part_lines is None else part_lines
        self.inline: list[dict[str, Any]] = []
        # ``written``: the count and parts of an earlier segment (a resumed close range).
        self.parts: list[dict[str, Any]] = list((written or {}).get("parts", []))
        self.count = int((written or {}).get("count", 0))
        self._lines: list[str] = []
        self._first: int | None = None
        self._last: int | None = None

    def add(self, entry: dict[str, Any]) -> None:
        """Append one entry (it has a ``shard_id``)."""
        self.count += 1
        if len(self.inline) < self.inline_max:
            self.inline.append(entry)
        self._lines.append(json.dumps(entry, sort_keys=True, separators=(",", ":"), default=str))
        self._first = entry["shard_id"] if self._first is None else self._first
        self._last = entry["shard_id"]
        if len(self._lines) >= self.part_lines:
            self._flush()

    def _flush(self) -> None:
        if not self._lines:
            return
        body = ("\n".join(self._lines) + "\n").encode()
        name = (
            f"{self.name}-{self._first:06d}-{self._last:06d}.jsonl"
            if self.by_span
            else f"{self.name}-{len(self.parts):05d}.jsonl"
        )
        key = self.layout.key("manifest", name)
        uri = self.put(key, body)
        self.parts.append(
            {"uri": uri, "count": len(self._lines), "bytes": len(body), "first_shard": self._first,
             "last_shard": self._last}
        )  # fmt: skip
        self._lines, self._first, self._last = [], None, None

    def section(self) -> dict[str, Any]:
        """The manifest's keys for this list (the last, partly filled part is written first)."""
        self._flush()
        return {self.name: self.inline, f"{self.name}_count": self.count, f"{self.name}_parts": self.parts}

    def written(self) -> dict[str, Any]:
        """The list's count and parts, all written (a range's share of the list; no inline entries)."""
        self._flush()
        return {"count": self.count, "parts": self.parts}


def _failure(row: ResultRecord) -> dict[str, Any]:
    return {
        "round": row.result.round,
        "shard_id": row.result.shard_id,
        "task_type": row.result.task_type,
        "error": row.result.error,
        "source": row.source,
        "receive_count": row.receive_count,
    }


def _output(r: ShardResult) -> dict[str, Any]:
    return {
        "shard_id": r.shard_id,
        "artifact_uri": r.artifact_uri,
        "num_samples": r.num_samples,
        "metrics": r.metrics,
        **({"code_version": r.code_version} if r.code_version else {}),
        # A task that took more than one attempt (a preemption, a retry), and where the last resumed.
        **({"attempt": r.attempt} if r.attempt > 1 else {}),
        **({"resume_step": r.resume_step} if r.resume_step is not None else {}),
    }


def render_manifest(
    job: JobRecord,
    status: str,
    error: str | None,
    rows: Iterable[ResultRecord],
    rounds: list[dict[str, Any]],
    put: PartPut,
    layout: planning.Layout,
    last_recorded: str | None = None,
    code_versions: Iterable[str] = (),
    copies: Mapping[int, int] | None = None,
) -> dict[str, Any]:
    """The result manifest, in one pass over ``rows``: deterministic for a given set of outcomes.

    ``rows`` come in (round, type, shard) order, as the table returns them, so a map job's
    outputs (one round) are in shard order. Growing lists go to part files through ``put``.
    ``last_recorded``: the latest recording time of outcomes not among ``rows`` (a data-parallel
    job's rows are its failures alone: ``data_parallel_rows``); ``code_versions``: those of the
    outcomes not among ``rows`` (the same case); ``copies``: a sweep's trials' losing backup copies'
    costs (``JobStore.copy_costs``).
    """
    request = job.request
    failed = PartWriter("failed", put, layout)
    outputs = PartWriter("outputs", put, layout) if request.kind == "map" else None
    metrics = MetricsAccumulator()
    trials: list[ShardResult] = []  # a sweep's ranking needs every trial (≤ MAX_GATHERED_TASKS of them)
    versions = set(code_versions)  # which training code produced the outcomes (shardq.worker.code)
    for row in rows:
        r = row.result
        last_recorded = row.recorded_at if last_recorded is None else max(last_recorded, row.recorded_at)
        if r.code_version:
            versions.add(r.code_version)
        if r.status == "failed":
            failed.add(_failure(row))
        if r.task_type != "train":
            continue
        if request.kind == "sweep":
            trials.append(r)
        elif outputs is not None:
            metrics.add(r)
            if r.status == "succeeded":
                outputs.add(_output(r))
    if request.kind == "data_parallel":
        section: dict[str, Any] = {"final_model_uri": job.model_uri if status == "SUCCEEDED" else None}
    elif request.kind == "sweep":
        section = sweep_section(request, trials, copies)
    else:
        assert outputs is not None
        section = {**outputs.section(), "metrics": metrics.result()}
    if versions:
        section["code_versions"] = sorted(versions)
    return _assemble(job, status, error, last_recorded, rounds, failed.section(), section)


def finished_at(job: JobRecord, status: str, last_recorded: str | None) -> str:
    """When the job ended: its latest recorded outcome, or for a cancel the cancel if later.

    Never "now": two racing finalizers write the same manifest. A cancel's request time is
    recorded once (``JobStore.request_cancel``), so it is as deterministic as the outcomes; the
    results of tasks that were running at the cancel may still come later, and then they end it.
    """
    # ISO 8601 UTC strings of one format compare in time order.
    ended = job.created_at if last_recorded is None else last_recorded
    if status == "CANCELLED" and job.cancel_requested_at:
        return max(ended, job.cancel_requested_at)
    return ended


def _assemble(
    job: JobRecord,
    status: str,
    error: str | None,
    last_recorded: str | None,
    rounds: list[dict[str, Any]],
    failed: dict[str, Any],
    section: dict[str, Any],
) -> dict[str, Any]:
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "job_id": job.job_id,
        "kind": job.kind,
        "status": status,
        "error": error,
        "created_at": job.created_at,
        "finished_at": finished_at(job, status, last_recorded),
        "rounds": rounds,
        **failed,
        "request": job.request.to_dict(),
        # What its counted outcomes cost, per round, and its budget stop (shardq.core.spend).
        "cost": spend.cost_summary(job),
        **section,
    }


def merge_ranges(digests: list[dict[str, Any]]) -> tuple[RoundAccumulator, str | None]:
    """The round's accumulator and latest recording time over its ranges' digests (range order)."""
    acc = RoundAccumulator()
    last: str | None = None
    for d in sorted(digests, key=lambda d: int(d["range"])):
        acc.merge(RoundAccumulator.from_state(d["round"]))
        if d["last_recorded"] is not None:
            last = d["last_recorded"] if last is None else max(last, d["last_recorded"])
    return acc, last


@dataclass
class Finisher:
    """Ends jobs: manifest, the one transition to a terminal status, the event.

    Parameters
    ----------
    store, s3, events:
        The job store and boto3 S3 and EventBridge clients.
    bucket, event_bus_name, job_ttl_days:
        From the stack's settings.
    metric, clock:
        Business-metric sink and wall clock (seconds since the epoch).
    """

    store: JobStore
    s3: Any
    events: Any
    bucket: str
    event_bus_name: str
    job_ttl_days: int
    metric: MetricSink
    clock: Callable[[], float]

    def manifest(
        self, job: JobRecord, status: str, error: str | None, digests: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """The job's manifest as of its recorded outcomes; writes its part files on the way.

        The outcomes are streamed (one query page in memory); see ``render_manifest``. A map job
        whose round was closed in ranges passes the ranges' ``digests`` instead: the manifest is
        then put together from them (their part files are already written) without reading a
        single outcome again.
        """
        summaries = self.store.round_summaries(job.job_id)
        if digests is not None:
            return self._ranged_manifest(job, status, error, digests, summaries)
        layout = planning.Layout(self.bucket, job.job_id)
        if job.kind == "data_parallel":
            rows, last, versions = data_parallel_rows(self.store, job)
            manifest = render_manifest(
                job, status, error, rows, summaries, self._put_part, layout, last, code_versions=versions
            )
            # A FedBuff job: versions, updates applied/late/failed and staleness (shardq.core.fedbuff_view).
            return {**manifest, **fedbuff_view.manifest_section(self.store, job, status)}
        rows = self.store.iter_results(job.job_id)  # one query page (≤ 1 MB) in memory at a time
        # The runs counted before the freeze: the frozen record's cost (the manifest's) holds those.
        copies = self.store.copy_costs(job.job_id, at_end=True) if job.request.asynchronous else None
        return render_manifest(job, status, error, rows, summaries, self._put_part, layout, copies=copies)

    def digest_range(
        self,
        job: JobRecord,
        round_no: int,
        index: int,
        first: int,
        last: int,
        *,
        partial: dict[str, Any] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """One range of a map round's close: shards ``first``…``last``, read once.

        Writes the range's JSON Lines part files (``outputs-<first>-<last>.jsonl``, ``failed-…``,
        named by the shards they hold) and returns what the round's summary and the manifest
        need of it: its accumulator state, its lists' counts and parts, its latest recording
        time. Bounded: one query page and one part file in memory; the digest is a few KB.
        Deterministic for a frozen round.

        Resumable: ``partial`` (a digest this returned earlier, with ``next_shard``) goes on from
        where it stopped; ``stop()``, asked every ``STOP_CHECK_ROWS`` rows, ends the segment early
        (parts written, ``next_shard`` set) so an invocation near its timeout hands the rest on.
        """
        layout = planning.Layout(self.bucket, job.job_id)
        before = partial or {}
        outputs = PartWriter(
            "outputs", self._put_part, layout, inline_max=0, by_span=True, written=before.get("outputs")
        )
        failed = PartWriter(
            "failed", self._put_part, layout, inline_max=0, by_span=True, written=before.get("failed")
        )
        acc = RoundAccumulator.from_state(before["round"]) if partial else RoundAccumulator()
        last_recorded: str | None = before.get("last_recorded")
        start, next_shard = int(before.get("next_shard", first)), None
        rows = self.store.iter_results(job.job_id, round_no, "train", shards=(start, last))
        for read, row in enumerate(rows, start=1):
            r = row.result
            last_recorded = row.recorded_at if last_recorded is None else max(last_recorded, row.recorded_at)
            acc.add(r)
            if r.status == "failed":
                failed.add(_failure(row))
            elif r.status == "succeeded":
                outputs.add(_output(r))
            if stop is not None and read % STOP_CHECK_ROWS == 0 and r.shard_id < last and stop():
                next_shard = r.shard_id + 1
                break
        digest = {
            "range": index,
            "first_shard": first,
            "last_shard": last,
            "round": acc.state(),
            "outputs": outputs.written(),
            "failed": failed.written(),
            "last_recorded": last_recorded,
        }
        return digest if next_shard is None else {**digest, "next_shard": next_shard}

    def _ranged_manifest(
        self,
        job: JobRecord,
        status: str,
        error: str | None,
        digests: list[dict[str, Any]],
        summaries: list[dict[str, Any]],
    ) -> dict[str, Any]:
        ordered = sorted(digests, key=lambda d: int(d["range"]))
        acc, last_recorded = merge_ranges(ordered)
        lists: dict[str, dict[str, Any]] = {}
        for name in ("failed", "outputs"):
            parts = [part for d in ordered for part in d[name]["parts"]]
            lists[name] = {
                name: self._head(parts, INLINE_MAX),
                f"{name}_count": sum(int(d[name]["count"]) for d in ordered),
                f"{name}_parts": parts,
            }
        section = {**lists["outputs"], "metrics": acc.metrics.result()}
        return _assemble(job, status, error, last_recorded, summaries, lists["failed"], section)

    def _head(self, parts: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
        """The first ``limit`` entries of a list written as part files (read only as far as needed)."""
        head: list[dict[str, Any]] = []
        for part in parts:
            if len(head) >= limit:
                break
            key = part["uri"].split("/", 3)[3]
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
            for line in body.iter_lines():
                if len(head) >= limit:
                    break
                if line:
                    head.append(json.loads(line))
            body.close()
        return head

    def _put_part(self, key: str, body: bytes) -> str:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/x-ndjson")
        return f"s3://{self.bucket}/{key}"

    def finalize(
        self,
        job: JobRecord,
        status: str,
        error: str | None = None,
        *,
        digests: list[dict[str, Any]] | None = None,
    ) -> str:
        """Write the result manifest, move the job to ``status`` once, publish the event once.

        ``digests``: a round closed in ranges (``digest_range``) builds the manifest from them.
        """
        layout = planning.Layout(self.bucket, job.job_id)
        manifest = self.manifest(job, status, error, digests)
        put_json(self.s3, self.bucket, layout.manifest_key(), manifest)
        expires = datetime.now(UTC) + timedelta(days=self.job_ttl_days)
        won = self.store.finish(
            job.job_id,
            status,
            finished_at=manifest["finished_at"],
            result_uri=f"s3://{layout.bucket}/{layout.manifest_key()}",
            error=error,
            expires_at=int(expires.timestamp()),
        )
        if won:
            self.metric("JobsFinished", 1, "Count")
            self.round_finished(job)
        # Winner or not, make sure the event went out (the winner may have crashed before it).
        current = self.store.get_job(job.job_id)
        if not won and current.status != status:
            # Lost to another ending (a cancel racing the last result): our manifest may have
            # overwritten the winner's, so put back the one that matches the job's status.
            put_json(
                self.s3,
                self.bucket,
                layout.manifest_key(),
                self.manifest(current, current.status, current.error, digests),
            )
        if current.event_pending:
            self.publish_finished(current)
        return current.status

    def round_finished(self, job: JobRecord) -> None:
        """Report the current round's duration."""
        seconds = round_seconds(job, self.clock())
        if seconds is not None:
            self.metric("RoundDuration", seconds, "Seconds")

    def publish_finished(self, job: JobRecord) -> None:
        """Publish ``Job Finished`` once: claim it, send it, then clear the pending flag.

        The claim is a lease: if its holder dies before clearing the flag, a later
        ``advance`` (driven by the redelivered batch) takes the claim over and sends it.
        """
        if not self.store.claim_event(job.job_id, self.clock(), EVENT_CLAIM_LEASE_S):
            return  # someone else holds (or already sent) it
        detail = {
            "job_id": job.job_id,
            "kind": job.kind,
            "status": job.status,
            "result_uri": job.result_uri,
            "error": job.error,
            # What its counted outcomes cost (shardq.core.spend); a budget stop's error says why it ended.
            "cost_usd": job.cost_micro_usd / 1_000_000,
        }
        try:
            resp = self.events.put_events(
                Entries=[
                    {
                        "Source": "shardq",
                        "DetailType": "Job Finished",
                        "Detail": json.dumps(detail),
                        "EventBusName": self.event_bus_name,
                    }
                ]
            )
            if resp.get("FailedEntryCount"):
                raise RuntimeError(f"EventBridge refused the Job Finished event: {resp.get('Entries')}")
        except Exception:
            # Give the claim back so the retry that follows can send it at once.
            self.store.release_event_claim(job.job_id)
            raise
        self.store.event_sent(job.job_id)
