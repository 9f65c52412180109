"""The dashboard in a real headless Chromium, over real jobs on the local cloud.

Chromium and its driver are Debian's (`chromium`, `chromium-driver`; `make dashboard` installs
them where missing); selenium drives that system browser, nothing is downloaded. Screenshots
are saved under .pytest_cache/d/dashboard/ and their paths printed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardq.core.engine import Engine
from tests.dashboard.conftest import DATA_PARALLEL, NEEDS, SWEEP, aggregate, run_job, workers

pytest.importorskip("starlette", reason=NEEDS)
pytest.importorskip("selenium", reason=NEEDS)
pytestmark = pytest.mark.local_cloud

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,2400",
)
WAIT_S = 30


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium with a fresh profile, driven through chromedriver."""
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip(
            "no Chromium here: `make dashboard` installs Debian's chromium and chromium-driver "
            "(apt-get, as root); without them the browser test cannot run"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def open_page(driver: Any, url: str) -> None:
    """Load ``url`` and wait until the app has rendered data from the API once."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    driver.refresh()  # a hash change alone keeps the old page; a load starts clean
    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.execute_script("return document.body.dataset.loaded === 'true'")
    )


def screenshot(driver: Any, request: pytest.FixtureRequest, name: str) -> Path:
    """Save a screenshot as a test artifact and print where."""
    cache = getattr(request.config, "cache", None)  # absent under `-p no:cacheprovider`
    folder = cache.mkdir("dashboard") if cache is not None else request.config.rootpath / ".screenshots"
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / f"{name}.png"
    assert driver.save_screenshot(str(path)), path
    print(f"screenshot: {path}")
    return path


READ_JOB_PAGE = """
const curves = {};
for (const card of document.querySelectorAll('.curve')) {
  const chart = Chart.getChart(card.querySelector('canvas'));
  const sets = chart.data.datasets;  // a per-shard chart has one; a round chart its shards' mean
  const mean = sets.find((d) => d.label.includes("weighted mean")) || sets[sets.length - 1];
  curves[card.dataset.metric] = {
    perShard: card.classList.contains('per-shard'),
    table: [...card.querySelectorAll('td.mean, td.value')].map((td) => Number(td.dataset.value)),
    chart: mean.data,
    labels: chart.data.labels,
  };
}
const painted = (canvas) => {
  const ctx = canvas.getContext('2d');
  const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++;
  return n;
};
const timeline = Chart.getChart(document.getElementById('timeline'));
return {
  title: document.getElementById('job-title').dataset.status,
  curves,
  curvePixels: [...document.querySelectorAll('.curve canvas')].map(painted),
  timelinePixels: painted(document.getElementById('timeline')),
  bars: timeline.data.datasets[0].data.map((d) => ({x: d.x, y: d.y, shard: d.entry.shard_id,
    round: d.entry.round, type: d.entry.task_type, status: d.entry.status})),
  lanes: timeline.data.labels,
  timelineRows: [...document.querySelectorAll('#timeline-table tbody tr')].map((tr) => ({
    round: Number(tr.dataset.round), shard: Number(tr.dataset.shard), type: tr.dataset.type,
    duration: Number(tr.querySelector('td.duration').dataset.value)})),
  progress: [...document.querySelectorAll('#progress-table tbody tr')].map((tr) => ({
    round: Number(tr.dataset.round), phase: tr.dataset.phase,
    done: Number(tr.querySelector('td.done').textContent)})),
  leaderboard: [...document.querySelectorAll('#leaderboard tbody tr')].map((tr) => ({
    trial: Number(tr.dataset.trial), objective: Number(tr.querySelector('td.objective').dataset.value)})),
  leaderboardShown: !document.getElementById('leaderboard-section').hidden,
  failures: [...document.querySelectorAll('#failures tbody tr')].map((tr) => tr.textContent),
  queues: [...document.querySelectorAll('#queues tbody tr')].map((tr) => tr.dataset.queue),
  error: document.getElementById('error').hidden ? null : document.getElementById('error').textContent,
};
"""


def test_job_list_curves_and_timeline_show_the_jobs_real_numbers(
    engine: Engine, dashboard: Any, browser: Any, request: pytest.FixtureRequest
) -> None:
    # GIVEN a FedAvg job (4 shards x 3 rounds) and a sweep with a failing trial, run by real workers
    run_job(engine, DATA_PARALLEL)
    run_job(engine, SWEEP)
    summaries = engine.store.round_summaries("dash-fedavg")
    results = engine.store.all_results("dash-fedavg")
    # WHEN the dashboard's job list is opened in Chromium
    open_page(browser, dashboard.url)
    rows = browser.execute_script(
        "return [...document.querySelectorAll('#jobs-table tbody tr')].map((tr) => "
        "[tr.dataset.jobId, tr.dataset.status, tr.querySelector('td.progress').dataset.pct])"
    )
    # THEN it lists both jobs, newest first, finished
    assert rows == [["dash-sweep", "SUCCEEDED", "100"], ["dash-fedavg", "SUCCEEDED", "100"]]
    screenshot(browser, request, "jobs")

    # WHEN the FedAvg job's page is opened
    open_page(browser, dashboard.url + "#/job/dash-fedavg")
    page = browser.execute_script(READ_JOB_PAGE)
    shot = screenshot(browser, request, "job-fedavg")
    # THEN the curves show the stored round means, in the chart and in its values table
    assert page["error"] is None and page["title"] == "SUCCEEDED"
    assert sorted(page["curves"]) == ["loss", "val_loss"]
    for metric, curve in page["curves"].items():
        assert not curve["perShard"]
        expected = [s["metrics"][metric]["mean"] for s in summaries]
        assert curve["chart"] == pytest.approx(expected, rel=1e-12)
        assert curve["table"] == pytest.approx(expected, rel=1e-12)
        assert curve["labels"] == ["1", "2", "3"]
    assert all(n > 1000 for n in page["curvePixels"]), page["curvePixels"]
    # AND the timeline has one bar per recorded outcome, of the recorded duration, on its worker's lane
    assert len(page["bars"]) == len(page["timelineRows"]) == len(results) == 15
    recorded = {(r.result.round, r.result.task_type, r.result.shard_id): r.result for r in results}
    for bar in page["bars"]:
        result = recorded[(bar["round"], bar["type"], bar["shard"])]
        start, end = bar["x"]
        assert end - start == pytest.approx(result.duration_s, abs=0.002)
        assert bar["y"] == result.worker_id and bar["status"] == "succeeded"
    assert {(r["round"], r["type"], r["shard"]): r["duration"] for r in page["timelineRows"]} == {
        k: r.duration_s for k, r in recorded.items()
    }
    assert set(page["lanes"]) <= {"worker-0", "worker-1"}
    assert page["timelinePixels"] > 1000
    # AND progress per round and phase is complete; all four queues are listed; no leaderboard
    assert [(p["round"], p["phase"], p["done"]) for p in page["progress"]] == [
        (r, phase, 4 if phase == "train" else 1) for r in range(3) for phase in ("train", "reduce")
    ]
    assert sorted(page["queues"]) == ["results", "results-dlq", "tasks", "tasks-dlq"]
    assert not page["leaderboardShown"] and page["failures"] == []
    assert shot.stat().st_size > 10_000
    # AND the log-scale switch turns every curve's y axis logarithmic
    browser.find_element("id", "log-scale").click()
    axes = browser.execute_script(
        "return [...document.querySelectorAll('.curve canvas')].map((c) => Chart.getChart(c).scales.y.type)"
    )
    assert axes == ["logarithmic", "logarithmic"]


def test_sweep_page_ranks_trials_and_shows_the_failure_text(
    engine: Engine, dashboard: Any, browser: Any, request: pytest.FixtureRequest
) -> None:
    # GIVEN a finished sweep whose trial 2 failed on every attempt
    run_job(engine, SWEEP)
    manifest = json.loads(
        engine.s3.get_object(Bucket=engine.settings.artifact_bucket, Key="jobs/dash-sweep/result.json")[
            "Body"
        ].read()
    )
    # WHEN its page is opened
    open_page(browser, dashboard.url + "#/job/dash-sweep")
    page = browser.execute_script(READ_JOB_PAGE)
    screenshot(browser, request, "job-sweep")
    # THEN the leaderboard is the manifest's, and the failure shows the worker's error text
    assert page["leaderboardShown"]
    assert [(r["trial"], r["objective"]) for r in page["leaderboard"]] == [
        (r["trial"], pytest.approx(r["objective"], rel=1e-12)) for r in manifest["leaderboard"]
    ]
    [failure] = page["failures"]
    assert "RuntimeError: shard 2 of round 0 hit a NaN loss" in failure
    # AND, one round only, each metric is charted per trial with the trial's own recorded value
    trials = sorted(
        (r.result.shard_id, r.result.metrics)
        for r in engine.store.all_results("dash-sweep")
        if r.result.status == "succeeded"
    )
    curve = page["curves"]["val_loss"]
    assert curve["perShard"] and curve["labels"] == [f"trial {t}" for t, _ in trials]
    assert curve["chart"] == curve["table"] == [m["val_loss"] for _, m in trials]
    assert any(b["status"] == "failed" and b["shard"] == 2 for b in page["bars"])


def test_a_running_job_refreshes_live(engine: Engine, dashboard: Any, browser: Any) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    # GIVEN a running job with no result yet, open in the browser
    engine.submit(DATA_PARALLEL)
    open_page(browser, dashboard.url + "#/job/dash-fedavg")
    bars = "return Chart.getChart(document.getElementById('timeline')).data.datasets[0].data.length"
    assert browser.execute_script(bars) == 0
    # WHEN two workers record their shards
    for w in workers(engine):
        w.poll_once()
    assert aggregate(engine) == 2
    # THEN the page shows them without a reload: two bars and a running round-1 point
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script(bars) == 2)
    labels = browser.execute_script(
        "return Chart.getChart(document.querySelector('.curve[data-metric=val_loss] canvas')).data.labels"
    )
    assert labels == ["1*"]


def test_the_job_page_shows_tenant_priority_and_window(engine: Engine, dashboard: Any, browser: Any) -> None:
    from dataclasses import replace

    from selenium.webdriver.support.ui import WebDriverWait

    # GIVEN windows of 2 per lane (issue #25) and a 40-shard job of tenant "vision" at priority 900
    windowed = Engine(
        settings=replace(engine.settings, scheduling=json.dumps({"window_per_lane": 2})),
        ddb=engine.ddb,
        sqs=engine.sqs,
        s3=engine.s3,
        events=engine.events,
    )
    windowed.submit(
        {
            **DATA_PARALLEL,
            "job_id": "dash-windowed",
            "kind": "map",
            "rounds": 1,
            "sharding": {"shard_count": 40},
            "tenant": "vision",
            "priority": 900,
        }
    )
    # WHEN its page is opened
    open_page(browser, dashboard.url + "#/job/dash-windowed")
    read = (
        "const d = document.querySelector('#job-fields dd[data-field=scheduling]'); return d && d.textContent"
    )
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script(read))
    # THEN it says whose job it is, how urgent, and what its window holds, as `shardq status` does
    # (its first window: one task per lane, 2 lanes)
    assert browser.execute_script(read) == "vision · priority 900 · 2 queued or running of a window of 2"
