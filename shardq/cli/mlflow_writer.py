"""Write a shardq job into an MLflow tracking server (``shardq track``, ``shardq watch --mlflow``).

What lands where, by job kind:

* ``data_parallel`` — one run: the request as params, each closed round's metrics as step
  ``round`` (the shards' weighted means under their own names, the global model's score from
  the round's reduce as ``global_<name>``), the final model and the manifest as artifacts.
* ``sweep`` — a parent run (the request as params, the best objective as a metric, the manifest
  as an artifact) and one child run per trial (its hyperparameters as params, the objective at
  each rung as step ``rung``, with the rung's budget as ``budget``; a diverged trial tagged
  ``shardq.outcome=diverged``).
* ``map`` — one run: the request as params, the outputs' weighted metrics, the outputs list
  (``outputs.jsonl``) and the manifest as artifacts.

Idempotent by design, so it can run after every poll of a running job and again later: runs are
found by tag (``shardq.job_id``, and ``shardq.trial`` on a child), a metric step already in the
run's history is not logged again, a param already set is left alone, an artifact already listed
is not uploaded again. MLflow is an optional extra (``make mlflow``): it is imported only here.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from shardq.core.jobstore import JobRecord
from shardq.core.planning import split_s3
from shardq.core.search import sweep_section

MAKE_TARGET = "make mlflow"
JOB_TAG = "shardq.job_id"
TRIAL_TAG = "shardq.trial"
PARENT_TAG = "mlflow.parentRunId"
# MLflow's own limits: a param value's length, and what one log_batch call may carry.
PARAM_VALUE_MAX = 6000
BATCH_METRICS, BATCH_PARAMS = 1000, 100
# Runs read per search_runs page when finding a job's runs (MLflow's server caps a page at 50,000).
SEARCH_PAGE = 1000
RUN_STATUS = {"SUCCEEDED": "FINISHED", "FAILED": "FAILED", "CANCELLED": "KILLED"}
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


class MlflowMissing(RuntimeError):
    """The optional MLflow client is not installed."""


def load_mlflow() -> Any:
    """The ``mlflow`` module, or ``MlflowMissing`` naming the make target that installs it."""
    try:
        import mlflow
        import mlflow.entities  # Metric, Param, RunTag
    except ImportError:
        raise MlflowMissing(
            f"MLflow is not installed in this environment; run `{MAKE_TARGET}` "
            "(installs the pinned mlflow-skinny client, requirements-mlflow.txt, into .venv)"
        ) from None
    return mlflow


def metric_key(name: str) -> str:
    """A metric or param name MLflow accepts (letters, digits, ``_-. /``; anything else → ``_``)."""
    return _KEY_UNSAFE.sub("_", name)


def number(value: Any) -> float | None:
    """A metric value as a float (NaN and ±inf included: the manifest writes them as strings)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def flat_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A request as MLflow params: nested objects as dotted keys, lists as JSON, values capped."""
    out: dict[str, str] = {}
    for key, value in sorted(data.items()):
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            out[metric_key(name)] = text[:PARAM_VALUE_MAX]
    return out


def millis(stamp: str | None) -> int | None:
    """An ISO-8601 timestamp (``...Z``) as epoch milliseconds."""
    if not stamp:
        return None
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)


@dataclass(frozen=True)
class Point:
    """One metric value at one step."""

    key: str
    value: float
    step: int
    timestamp: int


@dataclass
class RunPlan:
    """What one MLflow run should hold; ``MlflowWriter.sync_run`` adds what it lacks."""

    name: str
    tags: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)
    points: list[Point] = field(default_factory=list)
    artifacts: dict[str, bytes] = field(default_factory=dict)  # path in the run → content
    status: str = "RUNNING"
    start_ms: int | None = None
    end_ms: int | None = None


def _finite(value: Any) -> bool:
    v = number(value)
    return v is None or math.isfinite(v)


def _points(metrics: dict[str, Any], step: int, ts: int, prefix: str = "") -> list[Point]:
    points = []
    for name, value in sorted(metrics.items()):
        v = number(value)
        if v is not None:
            points.append(Point(metric_key(prefix + name), v, step, ts))
    return points


@dataclass
class JobReader:
    """What the writer needs of a job, read through the engine (job table and bucket)."""

    engine: Any

    def manifest(self, job: JobRecord) -> dict[str, Any] | None:
        if not job.result_uri:
            return None
        bucket, key = split_s3(job.result_uri)
        return dict(json.loads(self.engine.s3.get_object(Bucket=bucket, Key=key)["Body"].read()))

    def object_bytes(self, uri: str) -> bytes:
        bucket, key = split_s3(uri)
        return bytes(self.engine.s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    def outputs(self, manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every output of a map job: the inline list, or all of its part files."""
        parts = manifest.get("outputs_parts") or []
        if not parts:
            yield from manifest.get("outputs") or []
            return
        for part in parts:
            uri = part["uri"] if isinstance(part, dict) else str(part)
            for line in self.object_bytes(uri).splitlines():
                if line.strip():
                    yield json.loads(line)


def plan_job(job: JobRecord, reader: JobReader) -> tuple[RunPlan, list[RunPlan]]:
    """The job's run (and a sweep's child runs) as MLflow should hold them now."""
    manifest = reader.manifest(job) if job.terminal else None
    start = millis(job.created_at)
    tags = {JOB_TAG: job.job_id, "shardq.kind": job.kind, "shardq.status": job.status}
    if job.error:
        tags["shardq.error"] = job.error[:PARAM_VALUE_MAX]
    run = RunPlan(
        name=job.job_id,
        tags=tags,
        params=flat_params(job.request.to_dict()),
        status=RUN_STATUS.get(job.status, "RUNNING"),
        start_ms=start,
        end_ms=millis(job.finished_at) if job.terminal else None,
    )
    if manifest is not None:
        run.artifacts["manifest.json"] = json.dumps(manifest, indent=2, sort_keys=True).encode()
    children: list[RunPlan] = []
    if job.kind == "data_parallel":
        _plan_rounds(run, reader, job, manifest)
    elif job.kind == "sweep":
        children = _plan_sweep(run, reader, job, start or 0)
    elif manifest is not None:  # map
        _plan_map(run, reader, manifest, millis(manifest.get("finished_at")) or start or 0)
    return run, children


def _plan_rounds(run: RunPlan, reader: JobReader, job: JobRecord, manifest: dict[str, Any] | None) -> None:
    for summary in reader.engine.store.round_summaries(job.job_id):
        step = int(summary["round"])
        ts = millis(summary.get("started_at")) or run.start_ms or 0
        means = {n: v.get("mean") for n, v in (summary.get("metrics") or {}).items()}
        run.points += _points(means, step, ts)
        run.points += _points((summary.get("reduce") or {}).get("metrics") or {}, step, ts, "global_")
        counts = {k: summary.get(k) for k in ("shards_succeeded", "shards_failed", "num_samples")}
        run.points += _points(counts, step, ts)
    if manifest is not None and manifest.get("final_model_uri"):
        uri = str(manifest["final_model_uri"])
        run.tags["shardq.final_model_uri"] = uri
        run.artifacts[f"model/{uri.rsplit('/', 1)[-1]}"] = reader.object_bytes(uri)


def _plan_sweep(run: RunPlan, reader: JobReader, job: JobRecord, start: int) -> list[RunPlan]:
    request = job.request
    results = [r.result for r in reader.engine.store.all_results(job.job_id) if r.result.task_type == "train"]
    if request.objective is None or not results:
        return []
    copies = reader.engine.store.copy_costs(job.job_id) if request.asynchronous else None
    section = sweep_section(request, results, copies)
    objective = metric_key(request.objective.metric)
    best = section.get("best")
    if best is not None:
        run.tags["shardq.best_trial"] = str(best["trial"])
        run.points += _points({f"best_{objective}": best.get("objective")}, 0, start)
    children = []
    for row in section["leaderboard"]:
        trial = int(row["trial"])
        child = RunPlan(
            name=f"{job.job_id}/trial-{trial}",
            tags={
                JOB_TAG: job.job_id,
                TRIAL_TAG: str(trial),
                "shardq.outcome": str(row.get("outcome")),
                "shardq.rung": str(row.get("rung", 0)),
                **({"shardq.artifact_uri": str(row["artifact_uri"])} if row.get("artifact_uri") else {}),
                **({"shardq.best": "true"} if best is not None and int(best["trial"]) == trial else {}),
            },
            params=flat_params(row.get("hyperparameters") or {}),
            status=run.status if row.get("outcome") != "failed" else "FAILED",
            start_ms=start,
            end_ms=run.end_ms,
        )
        for point in row.get("rungs") or []:
            step = int(point["rung"])
            child.points += _points(
                {objective: point.get("objective"), "budget": point.get("budget")}, step, start
            )
        last = int(row.get("rung", 0))
        others = {k: v for k, v in (row.get("metrics") or {}).items() if metric_key(k) != objective}
        # MLflow's SQL store keeps NaN but writes ±inf as ±1.8e308: say which values were not finite.
        nonfinite = sorted(k for k, v in (row.get("metrics") or {}).items() if not _finite(v))
        if nonfinite:
            child.tags["shardq.nonfinite_metrics"] = ",".join(nonfinite)
        child.points += _points(others, last, start)
        if not row.get("rungs"):
            child.points += _points({objective: row.get("objective")}, last, start)
        children.append(child)
    return children


def _plan_map(run: RunPlan, reader: JobReader, manifest: dict[str, Any], ts: int) -> None:
    means = {n: v.get("mean") for n, v in (manifest.get("metrics") or {}).items()}
    run.points += _points(means, 0, ts)
    outputs = list(reader.outputs(manifest))
    run.points += _points(
        {"outputs_count": len(outputs), "failed_count": manifest.get("failed_count")}, 0, ts
    )
    run.artifacts["outputs.jsonl"] = "".join(json.dumps(o, sort_keys=True) + "\n" for o in outputs).encode()


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclass
class SyncStats:
    """What one sync added (a second sync of an unchanged job adds nothing)."""

    runs_created: int = 0
    points: int = 0
    params: int = 0
    artifacts: int = 0

    def text(self) -> str:
        return (
            f"{self.runs_created} run(s) created, {self.points} metric step(s), {self.params} param(s), "
            f"{self.artifacts} artifact(s) logged"
        )


@dataclass
class MlflowWriter:
    """Adds a job to an MLflow tracking server, idempotently (see the module docstring)."""

    tracking_uri: str
    experiment: str = "shardq"
    client: Any = None
    # Steps this writer logged or read back already, per (run id, key): only the first sync of a
    # run reads its metric histories.
    _logged: dict[tuple[str, str], set[int]] = field(default_factory=dict)
    _run_ids: dict[tuple[str, str], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        mlflow = load_mlflow()
        self._entities = mlflow.entities
        if self.client is None:
            self.client = mlflow.tracking.MlflowClient(tracking_uri=self.tracking_uri)

    def experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return str(found.experiment_id)
        return str(self.client.create_experiment(self.experiment))

    def sync(self, job: JobRecord, reader: JobReader) -> SyncStats:
        """Bring the job's runs up to date with its records; returns what was added."""
        stats = SyncStats()
        run, children = plan_job(job, reader)
        experiment_id = self.experiment_id()
        parent_id = self.sync_run(experiment_id, run, stats, trial=None)
        for child in children:
            child.tags[PARENT_TAG] = parent_id
            self.sync_run(experiment_id, child, stats, trial=child.tags[TRIAL_TAG])
        return stats

    def find_run(self, experiment_id: str, job_id: str, trial: str | None) -> Any:
        """The run tagged with this job (and trial), or None.

        A sweep's parent run is the one without a trial tag, and MLflow's filter cannot ask for a
        missing tag: every run of the job is read, page by page (a first page of trials alone must
        not pass for "no parent", or each ``track`` of a sweep over a page of trials adds one)."""
        cond = f"tags.`{JOB_TAG}` = '{job_id}'"
        cond += f" and tags.`{TRIAL_TAG}` = '{trial}'" if trial is not None else ""
        token = None
        while True:
            page = self.client.search_runs(
                [experiment_id], filter_string=cond, max_results=SEARCH_PAGE, page_token=token
            )
            for run in page:
                if trial is not None or TRIAL_TAG not in run.data.tags:
                    return run
            token = getattr(page, "token", None)
            if not token:
                return None

    def sync_run(self, experiment_id: str, plan: RunPlan, stats: SyncStats, *, trial: str | None) -> str:
        e = self._entities
        job_id = plan.tags[JOB_TAG]
        run_id = self._run_ids.get((job_id, trial or ""))
        existing = None
        if run_id is None:
            existing = self.find_run(experiment_id, job_id, trial)
            if existing is None:
                created = self.client.create_run(
                    experiment_id, start_time=plan.start_ms, tags=plan.tags, run_name=plan.name
                )
                run_id = created.info.run_id
                stats.runs_created += 1
            else:
                run_id = existing.info.run_id
            self._run_ids[(job_id, trial or "")] = run_id
        assert run_id is not None
        current = existing or self.client.get_run(run_id)
        have_params = current.data.params
        params = [e.Param(k, v) for k, v in plan.params.items() if k not in have_params]
        tags = [e.RunTag(k, v) for k, v in plan.tags.items() if current.data.tags.get(k) != v]
        metrics = [
            e.Metric(p.key, p.value, p.timestamp, p.step)
            for p in plan.points
            if p.step not in self._steps(run_id, p.key, current.data.metrics)
        ]
        for chunk in _chunks(params, BATCH_PARAMS):
            self.client.log_batch(run_id, params=chunk)
        if tags:
            self.client.log_batch(run_id, tags=tags)
        for chunk in _chunks(metrics, BATCH_METRICS):
            self.client.log_batch(run_id, metrics=chunk)
        for m in metrics:
            self._logged.setdefault((run_id, m.key), set()).add(m.step)
        stats.params += len(params)
        stats.points += len(metrics)
        stats.artifacts += self._artifacts(run_id, plan.artifacts)
        if plan.status not in ("RUNNING", current.info.status):
            self.client.set_terminated(run_id, status=plan.status, end_time=plan.end_ms)
        return str(run_id)

    def _steps(self, run_id: str, key: str, latest: dict[str, float]) -> set[int]:
        if (run_id, key) not in self._logged:
            steps = {m.step for m in self.client.get_metric_history(run_id, key)} if key in latest else set()
            self._logged[(run_id, key)] = steps
        return self._logged[(run_id, key)]

    def _artifacts(self, run_id: str, artifacts: dict[str, bytes]) -> int:
        if not artifacts:
            return 0
        have = set(self._listed(run_id, ""))
        added = 0
        with tempfile.TemporaryDirectory(prefix="shardq-mlflow-") as tmp:
            for path, content in sorted(artifacts.items()):
                if path in have:
                    continue
                local = Path(tmp) / path
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(content)
                folder = str(Path(path).parent)
                self.client.log_artifact(run_id, str(local), None if folder == "." else folder)
                added += 1
        return added

    def _listed(self, run_id: str, path: str) -> Iterator[str]:
        for info in self.client.list_artifacts(run_id, path or None):
            if info.is_dir:
                yield from self._listed(run_id, info.path)
            else:
                yield info.path
