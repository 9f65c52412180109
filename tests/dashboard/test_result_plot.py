"""``shardq result JOB --plot FILE.png`` against the local cloud; --json output unchanged."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from shardq.cli import main
from shardq.core.engine import Engine
from shardq.local.cloud import LocalCloud
from tests.dashboard.conftest import DATA_PARALLEL, NEEDS, run_job

pytestmark = pytest.mark.local_cloud


@pytest.fixture
def outputs_env(cloud: LocalCloud, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI pointed at this test's table and bucket (an outputs file, as `shardq local up` writes)."""
    s = engine.settings
    path = tmp_path / "outputs.json"
    path.write_text(
        json.dumps(
            {
                "JobTableName": s.job_table,
                "TaskQueueUrl": s.task_queue_url,
                "ResultsQueueUrl": s.results_queue_url,
                "ArtifactBucketName": s.artifact_bucket,
            }
        )
    )
    for key, value in cloud.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SHARDQ_OUTPUTS_JSON", str(path))


def test_result_plot_writes_the_curves_and_leaves_json_alone(
    engine: Engine, outputs_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib", reason=NEEDS)
    # GIVEN a finished 3-round FedAvg job
    run_job(engine, DATA_PARALLEL)
    capsys.readouterr()
    # WHEN its result is printed as JSON with --plot
    code = main(["result", "dash-fedavg", "--json", "--plot", str(tmp_path / "curves.png")])
    out, err = capsys.readouterr()
    # THEN stdout is still exactly the manifest, and the PNG is written
    assert code == 0
    assert json.loads(out)["rounds"] == engine.store.round_summaries("dash-fedavg")
    assert f"wrote the metric curves to {tmp_path / 'curves.png'}" in err
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_result_plot_without_matplotlib_exits_2_naming_make_dashboard(
    engine: Engine,
    outputs_env: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_job(engine, DATA_PARALLEL)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    capsys.readouterr()
    code = main(["result", "dash-fedavg", "--plot", str(tmp_path / "curves.png")])
    err = capsys.readouterr().err
    assert code == 2 and "make dashboard" in err and "matplotlib" in err
    assert not (tmp_path / "curves.png").exists()
