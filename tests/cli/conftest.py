"""CLI fixtures: ``shardq`` run in-process against this test's resources on the local cloud."""

from __future__ import annotations

import contextlib
import io
import json
import threading
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


class Transcript(io.StringIO):
    """A stdout another thread can wait on: ``wait_for(text)`` returns once ``text`` was written.

    Not a TTY, like a pipe: the CLI prints plain lines to it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()

    def write(self, s: str) -> int:
        with self.changed:
            n = super().write(s)
            self.changed.notify_all()
            return n

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        """Block until ``text`` was printed; AssertionError with the transcript after ``timeout``."""
        with self.changed:
            if not self.changed.wait_for(lambda: text in self.getvalue(), timeout):
                raise AssertionError(f"never printed {text!r}; printed so far:\n{self.getvalue()}")


class Background:
    """A thread whose exception ``join`` raises in the test (a worker stand-in that gave up)."""

    def __init__(self, target: Callable[[], Any]) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(target,), daemon=True)
        self.thread.start()

    def _run(self, target: Callable[[], Any]) -> None:
        try:
            target()
        except BaseException as exc:  # handed to the test thread by join()
            self.error = exc

    def join(self, timeout: float = 60.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the background worker did not finish"
        if self.error is not None:
            raise self.error


@pytest.fixture
def shardq_into(outputs: dict[str, str], capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """Run ``shardq ARGS...`` with stdout going to a ``Transcript`` the test (or a thread) watches."""

    def run(transcript: Transcript, *argv: str) -> Run:
        capsys.readouterr()
        with contextlib.redirect_stdout(transcript):
            code = main(list(argv))
        return Run(code=code, out=transcript.getvalue(), err=capsys.readouterr().err)

    return run
