"""The model-based test's ASHA invariants (``tests/chaos/model_asha.py``) must be able to fail.

A real ASHA sweep runs to its end on the local cloud; its table items pass the checker, and
copies of them, altered as a defect would alter the table, do not.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from typing import Any

from shardq.core.contracts import TrainingRequest
from shardq.core.engine import Engine
from tests.chaos.model_asha import asha_problems
from tests.chaos.model_world import scan_items
from tests.core.test_asha import ASHA, asha_sweep, run_to_end


def items_of(engine: Engine, clients: dict[str, Any], job_id: str) -> list[dict[str, Any]]:
    return [
        i
        for i in scan_items(clients["dynamodb"], engine.settings.job_table)
        if i["pk"]["S"] == f"JOB#{job_id}"
    ]


def test_the_asha_checker_passes_a_sound_sweep_and_sees_each_defect(
    engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN a finished 9-trial ASHA sweep in which trial 4 diverged at rung 0
    engine.submit(asha_sweep("chk"))
    run_to_end(
        engine, clients, loss=lambda t: math.nan if (t.round, t.shard_id) == (0, 4) else 1.0 + t.shard_id
    )
    job = engine.store.get_job("chk")
    items = items_of(engine, clients, "chk")
    assert job.status == "SUCCEEDED" and asha_problems(job, items) == []
    promoted = next(i for i in items if i["sk"]["S"].startswith("ASYNC#r0001#"))
    # WHEN a promotion names a trial that diverged, THEN the checker says so
    bad = copy.deepcopy(items)
    for i in bad:
        if i["sk"] == promoted["sk"]:
            i["trial"] = {"N": "4"}
    assert any("without a finite rung 0 result" in p for p in asha_problems(job, bad))
    # WHEN a promotion names a trial outside the top of the results its pass read
    worst = max(int(i["trial"]["N"]) for i in items if i["sk"]["S"].startswith("ASYNC#r0000#"))
    bad = copy.deepcopy(items)
    for i in bad:
        if i["sk"] == promoted["sk"]:
            i["trial"] = {"N": str(worst)}
    assert any("ranked" in p or "not among" in p for p in asha_problems(job, bad))
    # WHEN a decision item is lost (or written twice) beside its counter
    bad = [i for i in items if i["sk"] != promoted["sk"]]
    assert any("decisions, counted" in p for p in asha_problems(job, bad))


def test_the_checker_follows_the_eager_rule_and_sees_it_misapplied(
    engine: Engine, clients: dict[str, Any]
) -> None:
    # GIVEN a finished eager sweep (the best so far of a rung with fewer than eta results goes on)
    engine.submit(asha_sweep("chk-eager", early_stopping={**ASHA, "promotion": "eager"}))
    run_to_end(engine, clients)
    job = engine.store.get_job("chk-eager")
    items = items_of(engine, clients, "chk-eager")
    eager = [
        i for i in items if i["sk"]["S"].startswith("ASYNC#r0") and i.get("rule", {}).get("S") == "eager"
    ]
    assert job.status == "SUCCEEDED" and eager and asha_problems(job, items) == []
    # WHEN the same decisions are read as a paper-rule sweep's, THEN every eager promotion is flagged
    as_paper = TrainingRequest.from_dict({**job.request.to_dict(), "early_stopping": ASHA})
    paper = replace(job, request_json=as_paper.to_json())
    flagged = [p for p in asha_problems(paper, items) if "by the eager rule" in p]
    assert len(flagged) == len(eager)
    # WHEN an eager promotion claims eta results or more (the paper's rule applies there)
    bad = copy.deepcopy(items)
    target = next(i for i in bad if i["sk"] == eager[0]["sk"])
    target["known"] = {"N": str(ASHA["eta"])}
    assert any("by the eager rule" in p for p in asha_problems(job, bad))
    # WHEN an eager promotion on 1 result names a trial whose result came later
    bad = copy.deepcopy(items)
    target = next(i for i in bad if i["sk"] == eager[0]["sk"])
    rung = int(target["rung"]["N"])
    below = sorted(
        (i for i in items if i["sk"]["S"].startswith(f"RES#r{rung - 1:04d}#train#")),
        key=lambda i: (i["recorded_at"]["S"], i["sk"]["S"]),
    )
    target["known"] = {"N": "1"}
    target["trial"] = {"N": str(json.loads(below[1]["result"]["S"])["shard_id"])}
    assert any("not among" in p for p in asha_problems(job, bad))
