"""The dashboard's HTTP surface: JSON API, read-only routes, loopback-only Host, the CLI command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from shardq.core.engine import Engine
from shardq.local.cloud import LocalCloud
from tests.dashboard.conftest import NEEDS, SWEEP, run_job

pytest.importorskip("starlette", reason=NEEDS)
pytestmark = pytest.mark.local_cloud
ROOT = Path(__file__).resolve().parents[2]


def fetch(url: str, *, method: str = "GET", host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one request (errors are answers too)."""
    req = urllib.request.Request(url, method=method, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_api_serves_jobs_detail_queues_and_the_app(engine: Engine, dashboard: Any) -> None:
    run_job(engine, SWEEP)
    status, headers, body = fetch(dashboard.url + "api/jobs?status=SUCCEEDED&kind=sweep")
    assert status == 200 and [j["job_id"] for j in json.loads(body)] == ["dash-sweep"]
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert headers["x-content-type-options"] == "nosniff"
    detail = json.loads(fetch(dashboard.url + "api/jobs/dash-sweep")[2])
    assert detail["leaderboard"]["rows"][0]["rank"] == 1 and len(detail["failures"]) == 1
    manifest = json.loads(fetch(dashboard.url + "api/jobs/dash-sweep/manifest")[2])
    assert manifest["status"] == "SUCCEEDED" and manifest["job_id"] == "dash-sweep"
    assert {q["queue"] for q in json.loads(fetch(dashboard.url + "api/queues")[2])} == {
        "tasks", "tasks-dlq", "results", "results-dlq",
    }  # fmt: skip
    status, _, page = fetch(dashboard.url)
    assert status == 200 and b"/static/vendor/chart.umd.min.js" in page and b"https://" not in page
    status, _, chart = fetch(dashboard.url + "static/vendor/chart.umd.min.js")
    assert status == 200 and chart.startswith(b"/*!\n * Chart.js v4.6.1")


def test_bad_requests_get_one_clear_error(dashboard: Any) -> None:
    status, _, body = fetch(dashboard.url + "api/jobs/nope")
    assert status == 404 and "no job 'nope' in table" in json.loads(body)["error"]
    status, _, body = fetch(dashboard.url + "api/jobs?status=DONE")
    error = json.loads(body)["error"]
    assert status == 400 and error.startswith("status must be one of WAITING, RUNNING, SUCCEEDED")
    status, _, body = fetch(dashboard.url + "api/jobs?limit=0")
    assert status == 400 and "limit must be an integer from 1 to 500" in json.loads(body)["error"]


def test_nothing_writes_and_only_loopback_hosts_are_served(dashboard: Any) -> None:
    from starlette.routing import Route

    # Every route answers GET (and HEAD) only: there is no write action to reach.
    app = dashboard.server.config.app
    methods = {r.path: r.methods for r in app.routes if isinstance(r, Route)}
    assert methods and all(m == {"GET", "HEAD"} for m in methods.values()), methods
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert fetch(dashboard.url + "api/jobs", method=method)[0] == 405
    # A page that rebinds its own name to 127.0.0.1 sends its own Host: refused.
    assert fetch(dashboard.url + "api/jobs", host="attacker.example")[0] == 400
    assert fetch(dashboard.url + "api/queues", host="localhost")[0] == 200


def test_shardq_dashboard_serves_the_stack_of_the_outputs_file(
    cloud: LocalCloud, data: Any, engine: Engine, tmp_path: Path
) -> None:
    # GIVEN an outputs file naming this test's table and queues (what `shardq local up` writes)
    outputs = tmp_path / "outputs.json"
    outputs.write_text(
        json.dumps(
            {"JobTableName": engine.settings.job_table, "TaskQueueUrl": engine.settings.task_queue_url}
        )
    )
    engine.submit({**SWEEP, "job_id": "cli-dash"})
    env = {**os.environ, **cloud.env(), "SHARDQ_OUTPUTS_JSON": str(outputs), "PYTHONPATH": str(ROOT)}
    # WHEN `shardq dashboard --port 0` starts
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardq.cli", "dashboard", "--port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        # THEN it prints its loopback address, and serves the job from that table
        assert line.startswith("shardq dashboard on http://127.0.0.1:"), line + proc.stderr.read()  # type: ignore[union-attr]
        url = line.split()[3]
        jobs = json.loads(fetch(url + "api/jobs")[2])
        assert [j["job_id"] for j in jobs] == ["cli-dash"] and jobs[0]["status"] == "RUNNING"
        assert [q["queue"] for q in json.loads(fetch(url + "api/queues")[2])] == ["tasks"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_without_the_packages_shardq_dashboard_names_make_dashboard() -> None:
    code = (
        "import sys; sys.modules['starlette'] = None\n"
        "from shardq.cli import main\n"
        "sys.exit(main(['dashboard']))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert run.returncode == 2
    assert "the dashboard needs its optional packages" in run.stderr and "make dashboard" in run.stderr
