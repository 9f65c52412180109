"""The history checker's FedBuff part: it follows versions.

After a FedBuff job, read every update it recorded, the reduce inputs of every version and the
job's counts, and check:

1. each update (client, n) was recorded once, and listed under at most one version (its own);
2. each update's base is the version its client's previous update fixed for it (for n = 0: 0,
   or the version a freed slot handed the client its first task at), and never above the
   version it went into; τ = version − base;
3. no applied update has τ > max_staleness, and its weight is s(τ); a late one has τ > S;
4. every closed version's buffer holds exactly K applied updates, and its reduce applied exactly
   those (its inputs list each once, with its base's model) — never twice, never a late one;
5. the job's counts equal its items (nothing counted twice), each update has its own place in the
   recording order, and ``failed_total`` counts the failed updates since the last retry;
6. with ``calibration: "cached"`` (CA2FL), each reduce names as an applied update's cached one
   (``previous``) exactly its client's latest earlier applied update, with the model and base
   that update was applied with; so each applied update is cached at most once (replaced by
   the client's next one), a late or failed one never; and each version reads the running sum
   the reduce before it wrote;
7. with a ``model_average`` ("ema", "polynomial"), each reduce is sent its version's decay
   (``average_decay_at``: a function of the version, so a retried reduce gets the same) and, as the
   average so far, the one beside the version it steps from (none for the first): the averages
   chain version by version, none skipped or taken twice.
"""

from __future__ import annotations

import json
from typing import Any

from shardq.core.engine import Engine
from shardq.core.fedbuff_calibration import CALIBRATION_NAME
from shardq.core.fedbuff_params import (
    average_decay_at,
    average_uri,
    averages,
    cached_calibration,
    staleness_weight,
)
from shardq.core.planning import Layout
from shardq.core.store.fedbuff import FedBuffStore


def follows_versions(engine: Engine, job_id: str) -> list[str]:
    """Every violation of the rules above (empty when the history is sound)."""
    p: list[str] = []
    fb = FedBuffStore(engine.store)
    job = engine.store.get_job(job_id)
    assert job.request.strategy is not None
    params = job.request.strategy.params
    k, most = int(params["buffer_size"]), int(params["max_staleness"])
    updates = {(u.client, u.seq): u for u in fb.all_updates(job_id)}
    # a first update trains from version 0, or the version a freed slot handed it at (fewer slots)
    firsts = fb.first_bases(job_id, range(job.task_count))
    # 1, 2, 3: each update on its own
    for (c, n), u in updates.items():
        if n == 0:
            expected_base: int | None = firsts.get(c, 0)
        else:
            expected_base = updates.get((c, n - 1)) and updates[(c, n - 1)].next_base
        if expected_base is None:
            p.append(f"update {c}:{n} exists but update {c}:{n - 1} never fixed its next base")
        elif u.base != expected_base:
            p.append(f"update {c}:{n} has base {u.base}, its task was sent from version {expected_base}")
        if u.state in ("applied", "late", "surplus") and u.version < u.base:
            p.append(f"update {c}:{n} went into version {u.version} below its base {u.base}")
        if u.state == "applied":
            if u.tau != u.version - u.base or u.tau > most:
                p.append(
                    f"update {c}:{n} applied with τ {u.tau} (version {u.version}, base {u.base}, S {most})"
                )
            if abs(u.weight - staleness_weight(params, u.tau)) > 1e-12:
                p.append(f"update {c}:{n} weight {u.weight} is not s({u.tau})")
        if u.state == "late" and u.tau <= most:
            p.append(f"update {c}:{n} recorded late with τ {u.tau} ≤ max_staleness {most}")
    # 4: buffers and the reduces that applied them
    listed: dict[tuple[int, int], int] = {}
    reduced: dict[int, dict[str, Any]] = {}
    layout = Layout(engine.settings.artifact_bucket, job_id)
    closed = job.round + (1 if job.phase == "reduce" or job.status == "SUCCEEDED" else 0)
    for v in range(job.rounds):
        buffer = fb.buffer(job_id, v)
        for u in buffer:
            listed[(u.client, u.seq)] = listed.get((u.client, u.seq), 0) + 1
            if updates.get((u.client, u.seq)) is None or updates[(u.client, u.seq)].version != v:
                p.append(f"update {u.client}:{u.seq} listed under version {v} but recorded elsewhere")
        applied = sorted((u.client, u.seq) for u in buffer if u.state == "applied")
        if v < closed:
            if len(applied) != k:
                p.append(f"version {v} closed with {len(applied)} applied updates, buffer_size is {k}")
            inputs = _json(engine, layout.reduce_inputs_key(v))
            if inputs is None:
                p.append(f"version {v} closed but its reduce has no inputs")
                continue
            rows = [(r["client"], r["seq"]) for r in inputs["fedbuff"]]
            if sorted(rows) != applied or len(set(rows)) != len(rows):
                p.append(f"version {v}'s reduce applied {sorted(rows)}, its buffer holds {applied}")
            reduced[v] = inputs
    p += [f"update {key} listed under {n} versions" for key, n in listed.items() if n > 1]
    if cached_calibration(params):
        p += calibration_problems(job_id, job.task_count, layout, updates, reduced)
    if averages(params):  # 7: each reduce's average section
        for v, inputs in sorted(reduced.items()):
            stepped = engine.store.results(job_id, v - 1, "reduce") if v else []
            before = average_uri(str(stepped[0].result.model)) if stepped else None
            want = {
                "method": params["model_average"],
                "decay": average_decay_at(params, v),
                "previous_uri": before,
            }
            if inputs.get("average") != want:
                p.append(f"version {v}'s reduce was sent average {inputs.get('average')}, expected {want}")
    # 5: counts
    counts = fb.counts(job_id)
    states = [u.state for u in updates.values()]
    for name, state in (("applied", "applied"), ("late", "late"), ("failed", "failed")):
        if getattr(counts, name) != states.count(state):
            p.append(f"fb_{name} is {getattr(counts, name)}, {states.count(state)} updates are {state}")
    # A retry forgives the failures recorded before it (shardq.core.fedbuff_retry).
    counted = sum(1 for u in updates.values() if u.state == "failed" and u.order >= counts.forgive_seq)
    if job.failed_total != counted:
        p.append(f"failed_total {job.failed_total} != {counted} failed updates since the last retry")
    orders = sorted(u.order for u in updates.values() if u.state != "after_end")
    if orders != list(range(len(orders))) or counts.seq != len(orders):
        p.append(f"updates recorded in order {orders}, fb_seq {counts.seq}: one placed twice or lost")
    return p


def calibration_problems(
    job_id: str, clients: int, layout: Layout, updates: dict[tuple[int, int], Any], reduced: dict[int, Any]
) -> list[str]:
    """Rule 6 over the closed versions' reduce inputs (``reduced``) and the recorded updates."""
    p: list[str] = []
    applied_rows = {(r["client"], r["seq"]): r for ins in reduced.values() for r in ins["fedbuff"]}
    cached: dict[tuple[int, int], int] = {}
    for v, inputs in sorted(reduced.items()):
        cal = inputs.get("calibration")
        state = layout.reduce_output(v - 1) + CALIBRATION_NAME if v else None
        if cal is None or cal.get("state_uri") != state or cal.get("clients") != clients:
            p.append(f"version {v}'s calibration is {cal}, expected state {state} of {clients} clients")
            continue
        for r in inputs["fedbuff"]:
            c, n = r["client"], r["seq"]
            earlier = [m for (cc, m), u in updates.items() if cc == c and m < n and u.state == "applied"]
            want = max(earlier, default=None)
            prev = r.get("previous")
            got = None if prev is None else prev["seq"]
            if got != want:
                p.append(
                    f"update {c}:{n} of version {v} calibrates with update {got}, its latest applied: {want}"
                )
                continue
            if prev is not None:
                cached[(c, got)] = cached.get((c, got), 0) + 1
                row = applied_rows.get((c, got))
                if row is None or (prev["model_uri"], prev["base_model_uri"]) != (
                    row["model_uri"], row["base_model_uri"]
                ):  # fmt: skip
                    p.append(f"update {c}:{n}'s cached update {c}:{got} is not the one its version applied")
    p += [f"update {key} cached {k} times" for key, k in cached.items() if k > 1]
    return p


def trained_during_reduces(engine: Engine, job_id: str) -> int:
    """How many next tasks went out from a version whose buffer was already full (its reduce
    pending or running): the update that earned the task left the open buffer above the task's
    base. FedBuff sends them at once (``shardq.core.fedbuff``); a barrier would have held them."""
    fb = FedBuffStore(engine.store)
    strategy = engine.store.get_job(job_id).request.strategy
    assert strategy is not None
    k = int(strategy.params["buffer_size"])
    updates = fb.all_updates(job_id)
    fillers = set()
    for v in {u.version for u in updates if u.state == "applied"}:
        applied = [u for u in fb.buffer(job_id, v) if u.state == "applied"]
        if len(applied) == k:
            last = max(applied, key=lambda u: u.order)
            fillers.add((last.client, last.seq))
    count = 0
    for u in updates:
        open_after = u.version + (1 if (u.client, u.seq) in fillers else 0)
        if u.next_base is not None and u.state != "after_end" and u.next_base < open_after:
            count += 1
    return count


def _json(engine: Engine, key: str) -> Any:
    try:
        body = engine.s3.get_object(Bucket=engine.settings.artifact_bucket, Key=key)["Body"].read()
    except engine.s3.exceptions.NoSuchKey:
        return None
    return json.loads(body)
