"""The worker reloads an edited training module between tasks and names the code behind a result."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from shardq.core.contracts import ShardResult
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.settings import Settings
from shardq.worker.code import fingerprint, load_module
from tests.helpers import receive_all, result_for, tasks_of


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A user's training module on sys.path, forgotten again after the test."""
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "my_train_code_test.py"
    path.write_text("def train(task, ctx):\n    return {'version': 1}\n")
    yield path
    sys.modules.pop("my_train_code_test", None)


def test_an_edited_module_is_reloaded_before_the_next_task(
    user_module: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a worker that loaded the user's module and ran it
    first = fingerprint("my_train_code_test:train")
    assert load_module("my_train_code_test").train(None, None) == {"version": 1}
    assert load_module("my_train_code_test").train(None, None) == {"version": 1}  # unchanged: not reloaded
    # WHEN the user edits the training function (a later mtime, as an editor's save gives)
    user_module.write_text("def train(task, ctx):\n    return {'version': 2, 'edited': True}\n")
    st = user_module.stat()
    os.utime(user_module, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    # THEN the next load runs the new code, says so in the log, and the fingerprint changed
    assert load_module("my_train_code_test").train(None, None) == {"version": 2, "edited": True}
    assert "reloaded my_train_code_test: its file changed" in caplog.text
    second = fingerprint("my_train_code_test:train")
    assert first and second and first.startswith("sha256:") and first != second


def test_an_installed_distribution_is_named_by_its_version() -> None:
    from importlib import metadata

    assert fingerprint("botocore.session:Session") == f"botocore=={metadata.version('botocore')}"
    assert fingerprint("no_such_module_anywhere:train") is None


def test_the_manifest_lists_the_code_versions_of_the_results(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a map job whose shards were trained by two versions of the code
    engine.submit(
        {"job_id": "cv", "kind": "map", "dataset": {"num_samples": 20}, "sharding": {"shard_count": 2}}
    )
    tasks = tasks_of(receive_all(clients["sqs"], settings.task_queue_url))
    versions = ["sha256:aaaa", "sha256:bbbb"]
    results = [replace(result_for(t), code_version=versions[t.shard_id]) for t in tasks]
    # (the version survives the message's round trip)
    assert ShardResult.from_json(results[0].to_json()).code_version == versions[results[0].shard_id]
    # WHEN they are recorded and the job finishes
    engine.ingest([Outcome(r) for r in results])
    job = engine.store.get_job("cv")
    assert job.status == "SUCCEEDED" and job.result_uri
    bucket, key = job.result_uri.removeprefix("s3://").split("/", 1)
    manifest = json.loads(clients["s3"].get_object(Bucket=bucket, Key=key)["Body"].read())
    # THEN the manifest names both
    assert manifest["code_versions"] == versions


def test_a_bad_code_version_is_rejected_naming_the_field() -> None:
    from shardq.core.contracts import ValidationError

    body = {**result_for_dict(), "code_version": 7}
    with pytest.raises(ValidationError, match="code_version must be a string"):
        ShardResult.from_json(body)


def result_for_dict() -> dict[str, Any]:
    return ShardResult(job_id="j", round=0, shard_id=0, task_type="train", status="succeeded").to_dict()
