"""``shardq status`` and ``list`` of an ASHA sweep: the COST of rungs not reached, and the round.

Found on the local cloud with priced workers (``--price-per-hour 3``): while an ASHA sweep ran its
first rungs, the rung not reached yet read ``unpriced ($0 recorded)`` in the COST column, which
says the workers named no price. It has simply recorded nothing: the cell is ``-``. And the sweep
read ``round: 1/3 (train)`` in ``status`` and ``1/3`` in ``list`` from start to end (an asynchronous
sweep's ``round`` stays 0), after it had run its top rung, while ``watch --json`` said round 3: they
now show the furthest rung a task went to. The sweep is driven step by step by real priced workers
on the local cloud and read after every step.
"""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from shardq.cli.status import render_status, round_text, sent_rungs, status_data
from shardq.core.engine import Engine
from shardq.core.jobstore import JobRecord
from tests.cli.test_read_matrix import REQUESTS
from tests.finished import run_job

pytestmark = pytest.mark.local_cloud


def cost_cells(text: str) -> dict[int, str]:
    """Round (rung) number → its COST cell, from the progress table of ``render_status``."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("ROUND"))
    assert lines[at].split()[-1] == "COST", lines[at]
    cells = {}
    for line in lines[at + 1 :]:
        if not line.strip():
            break
        cols = re.split(r"\s{2,}", line.strip())
        cells[int(cols[0])] = cols[-1]
    return cells


def test_a_rung_not_reached_shows_no_cost_and_the_round_is_the_furthest_rung(engine: Engine) -> None:
    # GIVEN an ASHA sweep (3 rungs, 3 in flight) run by workers priced at $3,600 an hour
    seen: list[tuple[JobRecord, dict[int, str]]] = []

    def read(job: JobRecord) -> None:
        data = status_data(job)
        text = render_status(data, io.StringIO())
        if any(p.get("cost_usd") for p in data["progress"]):
            seen.append((job, cost_cells(text)))
        furthest = max(r for r in range(3) if job.enqueued(r, "train") or r == 0)
        assert re.search(rf"^round: +rung {furthest + 1}/3 reached$", text, re.M), text
        assert round_text({**data, "progress": sent_rungs(job)}, cell=True) == f"{furthest + 1}/3"

    request: dict[str, Any] = {**REQUESTS["sweep_asha"], "job_id": "cost-cells-asha"}
    job = run_job(engine, request, each=read, price_per_hour=3600.0)
    assert job.status == "SUCCEEDED", job.error
    # WHEN status is read after every step: some reads came before the top rung had a result
    early = [(j, cells) for j, cells in seen if j.status == "RUNNING" and not j.done(2, "train")]
    assert early, "no read while the top rung had recorded nothing"
    for _, cells in early:
        # THEN such a rung's cell is "-", a rung with results has its dollars, never "unpriced"
        assert cells[3] == "-", cells
        assert cells[1].startswith("$"), cells
        assert not any("unpriced" in c for c in cells.values()), cells
    # AND once the sweep ended, every rung it ran shows what it cost
    text = render_status(status_data(job), io.StringIO())
    final = cost_cells(text)
    assert all(c.startswith("$") for c in final.values()), final
    # AND it reads as having reached its top rung, in status and in list's ROUND cell
    assert job.done(2, "train") and re.search(r"^round: +rung 3/3 reached$", text, re.M), text
    assert (
        round_text({**job.view().to_dict(), "tasks_in_flight": 0, "progress": sent_rungs(job)}, cell=True)
        == "3/3"
    )
