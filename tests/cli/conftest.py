"""CLI fixtures: ``shardq`` run in-process against this test's resources on the local cloud."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shardq.cli import main
from shardq.core.settings import Settings
from shardq.local.cloud import LocalCloud
from shardq.local.resources import dlq_urls


@dataclass
class Run:
    """One finished ``shardq`` command."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Shardq = Callable[..., Run]


@pytest.fixture
def outputs(
    cloud: LocalCloud,
    settings: Settings,
    clients: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """An outputs file for this test's resources (what `shardq local up` writes), and the cloud's env."""
    dlqs = dlq_urls(clients["sqs"], settings)
    data = {
        "TaskQueueUrl": settings.task_queue_url,
        "TaskDlqUrl": dlqs["tasks"],
        "ResultsQueueUrl": settings.results_queue_url,
        "ResultsDlqUrl": dlqs["results"],
        "JobTableName": settings.job_table,
        "ArtifactBucketName": settings.artifact_bucket,
    }
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(data))
    for key, value in cloud.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SHARDQ_OUTPUTS_JSON", str(path))
    monkeypatch.delenv("NO_COLOR", raising=False)
    return data


@pytest.fixture
def shardq(outputs: dict[str, str], capsys: pytest.CaptureFixture[str]) -> Shardq:
    """Run ``shardq ARGS...`` in this process; stdout is not a TTY, as in a script or CI."""

    def run(*argv: str) -> Run:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return Run(code=code, out=captured.out, err=captured.err)

    return run


@pytest.fixture
def write_request(tmp_path: Path) -> Callable[[dict[str, Any]], str]:
    """Write a request to a JSON file; returns its path."""

    def write(request: dict[str, Any], name: str = "request.json") -> str:
        path = tmp_path / name
        path.write_text(json.dumps(request))
        return str(path)

    return write
