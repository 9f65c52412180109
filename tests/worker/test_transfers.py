"""The worker's own S3 transfers and scratch directories (issue #27: the per-task overhead between
two tasks), on the local cloud.

A model up to ``SINGLE_REQUEST_MAX`` moves in one request (PutObject / GetObject) instead of boto3's
managed transfer, which starts a thread pool per call and asks HeadObject before a download; a
larger one still goes through the managed, multipart transfer. A task's scratch directory is removed
in the background, after the attempt, never under the next one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, IncompleteReadError

from shardq.core import artifacts as core_artifacts
from shardq.core.settings import Settings
from shardq.worker import artifacts, scratch
from shardq.worker.artifacts import TaskFiles
from tests.helpers import CountingClient, CutShort

pytestmark = pytest.mark.local_cloud


class Files(TaskFiles):
    def __init__(self, s3: Any) -> None:
        self.s3 = s3


def roundtrip(s3: Any, settings: Settings, tmp_path: Path, size: int) -> tuple[Files, bytes, Path]:
    """Upload a ``size``-byte file as a task output, then download it again; returns what moved."""
    data = os.urandom(size)
    out = tmp_path / "output"
    out.mkdir()
    (out / "model.npz").write_bytes(data)
    files = Files(CountingClient(s3))
    uri = files._upload(out / "model.npz", out, f"s3://{settings.artifact_bucket}/jobs/t/r0/")
    assert uri == f"s3://{settings.artifact_bucket}/jobs/t/r0/model.npz"
    got = files._download(uri, tmp_path / "init" / "model.npz")
    return files, data, got


def test_a_small_model_moves_in_one_request_each_way(
    settings: Settings, clients: dict[str, Any], tmp_path: Path
) -> None:
    files, data, got = roundtrip(clients["s3"], settings, tmp_path, 50_000)
    assert got.read_bytes() == data
    assert files.s3.counts == {"put_object": 1, "get_object": 1}


def test_a_model_over_the_limit_takes_the_managed_transfer(
    settings: Settings, clients: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a limit of 64 KiB (the same code path as a model over 8 MiB, at a test's size)
    monkeypatch.setattr(artifacts, "SINGLE_REQUEST_MAX", 64 * 1024)
    files, data, got = roundtrip(clients["s3"], settings, tmp_path, 200_000)
    # THEN the upload is boto3's managed one, and the download's GetObject is left unread for it
    assert got.read_bytes() == data
    assert files.s3.counts == {"upload_file": 1, "get_object": 1, "download_file": 1}


def test_a_missing_object_raises_the_error_callers_test_for(
    settings: Settings, clients: dict[str, Any], tmp_path: Path
) -> None:
    # (the reduce's server state treats NoSuchKey / 404 as "start at zero")
    files = Files(CountingClient(clients["s3"]))
    with pytest.raises(ClientError) as err:
        files._download(f"s3://{settings.artifact_bucket}/nothing/here.npz", tmp_path / "x.npz")
    assert err.value.response["Error"]["Code"] in ("NoSuchKey", "404")
    # an error of the request itself (botocore has already retried it as its policy says) is raised
    # at once, not requested DOWNLOAD_ATTEMPTS times more
    assert files.s3.counts["get_object"] == 1


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core_artifacts, "DOWNLOAD_BACKOFF_S", 0.0)


def test_a_download_cut_short_raises_and_leaves_no_partial_file(
    settings: Settings, clients: dict[str, Any], tmp_path: Path
) -> None:
    # GIVEN a model on S3 and a client whose download stream ends early
    s3 = clients["s3"]
    s3.put_object(Bucket=settings.artifact_bucket, Key="jobs/t/cut/model.npz", Body=b"x" * 5000)
    files = Files(CutShort(s3))
    dest = tmp_path / "init" / "model.npz"
    # WHEN the worker downloads it and every attempt is cut short, THEN the error surfaces after
    # the last attempt (the task fails, it is not trained from half a model) and neither the file
    # nor its temporary part is left behind
    with pytest.raises(IncompleteReadError):
        files._download(f"s3://{settings.artifact_bucket}/jobs/t/cut/model.npz", dest)
    assert list(dest.parent.iterdir()) == []
    assert files.s3.counts["get_object"] == core_artifacts.DOWNLOAD_ATTEMPTS
    # AND a download that completes leaves exactly the file
    Files(s3)._download(f"s3://{settings.artifact_bucket}/jobs/t/cut/model.npz", dest)
    assert [p.name for p in dest.parent.iterdir()] == ["model.npz"] and dest.read_bytes() == b"x" * 5000


def test_scratch_directories_are_removed_in_the_background_and_the_remover_restarts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scratch, "IDLE_EXIT_S", 0.05)
    remover = scratch.Remover()
    # GIVEN two attempts' directories, each holding files and folders
    kept = []
    for _ in range(2):
        with scratch.task_dir(remover) as tmp:
            (tmp / "output").mkdir()
            (tmp / "output" / "model.npz").write_bytes(b"x" * 1000)
            kept.append(tmp)
    # WHEN the remover has run, THEN both are gone and its thread ended (nothing left to remove)
    remover.drain()
    assert not any(p.exists() for p in kept)
    assert remover._thread is None
    # AND a later attempt starts it again; a failing block still hands its directory over
    with pytest.raises(RuntimeError), scratch.task_dir(remover) as tmp:
        raise RuntimeError("the training function failed")
    remover.drain()
    assert not tmp.exists()


@pytest.mark.parametrize("cuts", [1, 2])
def test_a_download_cut_short_is_read_again_and_the_task_goes_on(
    settings: Settings, clients: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture, cuts: int
) -> None:
    # GIVEN a model on S3 and a connection that drops in the middle of the first download(s) only
    s3 = clients["s3"]
    s3.put_object(Bucket=settings.artifact_bucket, Key="jobs/t/blip/model.npz", Body=b"y" * 5000)
    files = Files(CutShort(s3, cuts=cuts))
    dest = tmp_path / "init" / "model.npz"
    # WHEN the worker downloads it, THEN the next GetObject brings the whole model (no failed shard)
    # and each cut is logged
    files._download(f"s3://{settings.artifact_bucket}/jobs/t/blip/model.npz", dest)
    assert dest.read_bytes() == b"y" * 5000 and [p.name for p in dest.parent.iterdir()] == ["model.npz"]
    assert files.s3.counts["get_object"] == cuts + 1
    assert sum("cut short" in r.getMessage() for r in caplog.records) == cuts
