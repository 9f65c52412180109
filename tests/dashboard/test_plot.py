"""``shardq result --plot``: the metric curves of a real job's manifest, drawn to a file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from shardq.core.engine import Engine
from shardq.dashboard.plot import PlotError, metric_series, plot_manifest
from tests.dashboard.conftest import DATA_PARALLEL, NEEDS, run_job


@pytest.mark.local_cloud
def test_plot_of_a_finished_job_draws_each_metric_per_round(
    engine: Engine, data: Any, tmp_path: Path
) -> None:
    image = pytest.importorskip("matplotlib.image", reason=NEEDS)
    # GIVEN the result manifest of a 3-round FedAvg job
    run_job(engine, DATA_PARALLEL)
    manifest = data.manifest("dash-fedavg")
    # WHEN its curves are plotted
    path = plot_manifest(manifest, tmp_path / "plots" / "curves.png")
    # THEN the series are the manifest's round means, and a PNG with two panels side by side is written
    series = metric_series(manifest["rounds"])
    assert list(series) == ["loss", "val_loss"]
    assert series["val_loss"]["round"] == [1, 2, 3]
    assert series["val_loss"]["mean"] == [r["metrics"]["val_loss"]["mean"] for r in manifest["rounds"]]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = image.imread(path).shape[:2]
    assert (width, height) == (int(4.2 * 2 * 120), int(3.2 * 120))


def test_a_manifest_without_metrics_is_refused(tmp_path: Path) -> None:
    manifest = {"job_id": "j", "kind": "map", "status": "SUCCEEDED", "rounds": [{"round": 0, "metrics": {}}]}
    with pytest.raises(PlotError, match="recorded no metrics per round"):
        plot_manifest(manifest, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_an_unknown_image_suffix_names_the_formats(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason=NEEDS)
    manifest = {"job_id": "j", "rounds": [{"round": 0, "metrics": {"loss": {"mean": 1, "min": 1, "max": 1}}}]}
    with pytest.raises(PlotError, match=r"cannot write curves\.txt: give a file ending in one of .*\.png"):
        plot_manifest(manifest, tmp_path / "curves.txt")


def test_without_matplotlib_the_error_names_make_dashboard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets when absent
    manifest = {"job_id": "j", "rounds": [{"round": 0, "metrics": {"loss": {"mean": 1, "min": 1, "max": 1}}}]}
    with pytest.raises(
        PlotError, match="needs matplotlib, which is not installed; install it with `make dashboard`"
    ):
        plot_manifest(manifest, tmp_path / "curves.png")
