"""A task's checkpoints against the local cloud's S3: the pointer moves last, the last two are kept,
bad or foreign checkpoints are skipped with a warning naming them, failed uploads cost only the
resume, large ones go multipart."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from shardq.core import artifacts as core_artifacts
from shardq.core import checkpoint_keys
from shardq.core.contracts import ShardResult, ShardTask
from shardq.core.settings import Settings
from shardq.worker.checkpoints import POINTER, CheckpointUnreadable, TaskCheckpoints
from tests.helpers import CutShort


def a_task(shard: int = 0, generation: int = 0, job_id: str = "ckpt") -> ShardTask:
    return ShardTask(
        job_id=job_id, round=1, shard_id=shard, shard_count=4, task_type="train", kind="data_parallel",
        entrypoint="tests.workloads:ok", data={"start": 0, "end": 10}, hyperparameters={},
        output_prefix=f"s3://b/jobs/{job_id}/", generation=generation,
    )  # fmt: skip


class FailingUploads:
    """A real S3 client whose uploads of keys containing ``marker`` raise (fault injection only)."""

    def __init__(self, real: Any, marker: str, times: int | None = None) -> None:
        self.real, self.marker, self.times, self.failed = real, marker, times, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def _maybe_fail(self, key: str) -> None:
        if self.marker in key and (self.times is None or self.failed < self.times):
            self.failed += 1
            raise ConnectionError(f"injected: upload of {key} dropped")

    def upload_file(self, path: str, bucket: str, key: str, **kw: Any) -> None:
        self._maybe_fail(key)
        self.real.upload_file(path, bucket, key, **kw)

    def put_object(self, **kw: Any) -> Any:
        self._maybe_fail(kw["Key"])
        return self.real.put_object(**kw)


@pytest.fixture
def bucket(settings: Settings) -> str:
    return settings.artifact_bucket


def checkpoints(s3: Any, bucket: str, task: ShardTask, attempt: int = 1, **kw: Any) -> TaskCheckpoints:
    return TaskCheckpoints(
        s3, bucket, task, attempt=attempt, worker_id=f"w{attempt}", sleep=lambda s: None, **kw
    )


def save(cp: TaskCheckpoints, tmp: Path, step: int, payload: bytes = b"") -> bool:
    src = tmp / f"src-{step}"
    (src / "sub").mkdir(parents=True, exist_ok=True)
    (src / "model.bin").write_bytes(payload or f"weights at step {step}".encode())
    (src / "sub" / "rng.json").write_text(json.dumps({"step": step}))
    return cp.save(step, src, tmp / "scratch")


def keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    resp = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"].removeprefix(prefix) for o in resp.get("Contents", []))


def test_a_saved_checkpoint_is_restored_by_the_next_attempt_with_its_files_and_history(
    clients: dict[str, Any], bucket: str, tmp_path: Path
) -> None:
    # GIVEN attempt 1 saved steps 1 and 2
    s3, task = clients["s3"], a_task()
    first = checkpoints(s3, bucket, task, attempt=1)
    assert first.restore(tmp_path / "r1") is None  # a fresh start
    assert save(first, tmp_path, 1) and save(first, tmp_path, 2)
    # WHEN attempt 2 starts
    second = checkpoints(s3, bucket, task, attempt=2)
    restored = second.restore(tmp_path / "r2")
    # THEN it has step 2's files, and knows attempt 1 went from scratch to step 2
    assert restored is not None and restored.step == 2
    assert (restored.path / "model.bin").read_bytes() == b"weights at step 2"
    assert json.loads((restored.path / "sub" / "rng.json").read_text()) == {"step": 2}
    assert second.earlier_attempts() == [
        {"attempt": 1, "worker_id": "w1", "resume_step": None, "last_step": 2}
    ]
    # AND its own save records where it resumed from
    assert save(second, tmp_path, 3)
    third = checkpoints(s3, bucket, task, attempt=3)
    assert third.restore(tmp_path / "r3") is not None
    assert [a["resume_step"] for a in third.earlier_attempts()] == [None, 2]


def test_the_last_two_checkpoints_are_kept_and_older_ones_deleted(
    clients: dict[str, Any], bucket: str, tmp_path: Path
) -> None:
    s3, task = clients["s3"], a_task()
    cp = checkpoints(s3, bucket, task)
    for step in (10, 20, 30, 40):
        assert save(cp, tmp_path, step)
    names = [checkpoint_keys.step_name(s) for s in (30, 40)]
    assert keys(s3, bucket, cp.prefix) == sorted(
        [f"{n}.{ext}" for n in names for ext in ("json", "tar")] + ["latest.json"]
    )
    assert cp.prefix == "checkpoints/ckpt/r1/train/s0/g0/"


def test_a_truncated_latest_checkpoint_is_skipped_with_a_warning_naming_it_and_the_previous_used(
    clients: dict[str, Any], bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s3, task = clients["s3"], a_task()
    cp = checkpoints(s3, bucket, task)
    assert save(cp, tmp_path, 1) and save(cp, tmp_path, 2, payload=b"x" * 100_000)
    # GIVEN step 2's tar cut short (a writer that died mid-object, a bad copy)
    tar_key = f"{cp.prefix}{checkpoint_keys.step_name(2)}.tar"
    whole = s3.get_object(Bucket=bucket, Key=tar_key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=tar_key, Body=whole[: len(whole) // 2])
    # WHEN the next attempt restores
    with caplog.at_level(logging.WARNING, logger="shardq.worker"):
        restored = checkpoints(s3, bucket, task, attempt=2).restore(tmp_path / "r")
    # THEN it resumes from step 1, and the warning names the bad one and the one used
    assert restored is not None and restored.step == 1
    assert (restored.path / "model.bin").read_bytes() == b"weights at step 1"
    warning = caplog.text
    assert f"s3://{bucket}/{tar_key}" in warning and "truncated" in warning
    assert f"{checkpoint_keys.step_name(1)}.tar" in warning


def test_a_foreign_checkpoint_is_never_used_and_two_bad_ones_mean_a_fresh_start(
    clients: dict[str, Any], bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s3 = clients["s3"]
    mine, other = a_task(shard=0), a_task(shard=1)
    assert save(checkpoints(s3, bucket, other), tmp_path, 5)
    own = checkpoints(s3, bucket, mine)
    assert save(own, tmp_path, 4) and save(own, tmp_path, 5)
    # GIVEN shard 1's step-5 checkpoint copied over shard 0's (a bad copy, a wrong prefix), and
    # shard 0's step 4 tampered with (its bytes no longer match its sha256)
    theirs = checkpoints(s3, bucket, other).prefix
    for ext in ("tar", "json"):
        name = f"{checkpoint_keys.step_name(5)}.{ext}"
        s3.copy_object(
            Bucket=bucket, Key=own.prefix + name, CopySource={"Bucket": bucket, "Key": theirs + name}
        )
    tar4 = own.prefix + f"{checkpoint_keys.step_name(4)}.tar"
    body = bytearray(s3.get_object(Bucket=bucket, Key=tar4)["Body"].read())
    body[600] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=tar4, Body=bytes(body))
    # WHEN shard 0's next attempt restores
    with caplog.at_level(logging.WARNING, logger="shardq.worker"):
        restored = checkpoints(s3, bucket, mine, attempt=2).restore(tmp_path / "r")
    # THEN it uses neither and starts fresh, saying why for each
    assert restored is None
    assert "foreign" in caplog.text and "sha256 differs" in caplog.text
    assert "starting the task fresh" in caplog.text


def test_a_checkpoint_of_another_retry_generation_or_job_is_never_used(
    clients: dict[str, Any], bucket: str, tmp_path: Path
) -> None:
    s3, task = clients["s3"], a_task(generation=0)
    assert save(checkpoints(s3, bucket, task), tmp_path, 7)
    assert checkpoints(s3, bucket, replace(task, generation=1)).restore(tmp_path / "g1") is None
    assert checkpoints(s3, bucket, a_task(job_id="ckpt-other")).restore(tmp_path / "j") is None
    assert checkpoints(s3, bucket, replace(task, round=2)).restore(tmp_path / "r2") is None
    assert checkpoints(s3, bucket, task).restore(tmp_path / "g0") is not None


def test_a_failed_upload_is_retried_then_costs_only_the_resume_and_never_moves_the_pointer(
    clients: dict[str, Any], bucket: str, tmp_path: Path
) -> None:
    s3, task = clients["s3"], a_task()
    cp = checkpoints(s3, bucket, task)
    assert save(cp, tmp_path, 1)
    # GIVEN one dropped upload: the retry saves it
    cp.s3 = flaky = FailingUploads(s3, checkpoint_keys.step_name(2), times=1)
    assert save(cp, tmp_path, 2) and flaky.failed == 1
    # GIVEN uploads of step 3 that keep failing: save says False, and the pointer still names step 2
    cp.s3 = flaky = FailingUploads(s3, checkpoint_keys.step_name(3))
    assert save(cp, tmp_path, 3) is False and flaky.failed == 3
    restored = checkpoints(s3, bucket, task, attempt=2).restore(tmp_path / "r")
    assert restored is not None and restored.step == 2


def test_the_pointer_moves_only_after_the_upload_completed(
    clients: dict[str, Any], bucket: str, tmp_path: Path
) -> None:
    # GIVEN a writer whose manifest upload dies (the tar is up, the pointer not yet moved)
    s3, task = clients["s3"], a_task()
    cp = checkpoints(s3, bucket, task)
    assert save(cp, tmp_path, 1)
    cp.s3 = FailingUploads(s3, "latest.json")
    assert save(cp, tmp_path, 2) is False
    # THEN step 2's objects exist, but the next attempt resumes from step 1
    assert f"{checkpoint_keys.step_name(2)}.tar" in keys(s3, bucket, cp.prefix)
    restored = checkpoints(s3, bucket, task, attempt=2).restore(tmp_path / "r")
    assert restored is not None and restored.step == 1


class RefusedPointer:
    """A real S3 client whose GetObject of the pointer is refused (a throttle or a denied call that
    outlived botocore's retries); everything else goes through."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def get_object(self, **kw: Any) -> Any:
        if kw["Key"].endswith(POINTER):
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "injected"}}, "GetObject")
        return self.real.get_object(**kw)


def test_an_unreadable_pointer_fails_the_attempt_instead_of_discarding_the_checkpoints(
    clients: dict[str, Any], bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a task with a checkpoint at step 2
    monkeypatch.setattr(core_artifacts, "DOWNLOAD_BACKOFF_S", 0.0)
    s3, task = clients["s3"], a_task(shard=3)
    cp = checkpoints(s3, bucket, task)
    assert save(cp, tmp_path, 1) and save(cp, tmp_path, 2)
    # WHEN the next attempt's read of the pointer is cut short once, THEN it is read again and the
    # attempt resumes from step 2
    restored = checkpoints(CutShort(s3, cuts=1), bucket, task, attempt=2).restore(tmp_path / "r1")
    assert restored is not None and restored.step == 2
    # AND WHEN the pointer cannot be read at all, THEN the attempt fails (the worker hands the task
    # back for a retry) rather than start from step 0, whose first save would replace the pointer
    with pytest.raises(CheckpointUnreadable, match=r"latest\.json"):
        checkpoints(RefusedPointer(s3), bucket, task, attempt=3).restore(tmp_path / "r2")
    assert checkpoints(s3, bucket, task, attempt=4).restore(tmp_path / "r3").step == 2  # type: ignore[union-attr]


def test_a_large_checkpoint_uploads_multipart(clients: dict[str, Any], bucket: str, tmp_path: Path) -> None:
    s3, task = clients["s3"], a_task()
    cp = checkpoints(s3, bucket, task, multipart_threshold=5 * 1024 * 1024)
    payload = bytes(range(256)) * (12 * 1024 * 1024 // 256)
    assert save(cp, tmp_path, 1, payload=payload)
    head = s3.head_object(Bucket=bucket, Key=f"{cp.prefix}{checkpoint_keys.step_name(1)}.tar")
    assert head["ETag"].strip('"').endswith("-3")  # S3's multipart ETag: md5-of-md5s, dash, part count
    restored = checkpoints(s3, bucket, task, attempt=2).restore(tmp_path / "r")
    assert restored is not None and (restored.path / "model.bin").read_bytes() == payload


def test_a_checkpoint_that_would_unpack_outside_its_directory_is_refused(
    clients: dict[str, Any], bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a checkpoint whose tar (with a matching manifest) holds ../escape
    s3, task = clients["s3"], a_task()
    cp = checkpoints(s3, bucket, task)
    assert save(cp, tmp_path, 1)
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    import hashlib

    data = evil.getvalue()
    name = checkpoint_keys.step_name(1)
    s3.put_object(Bucket=bucket, Key=f"{cp.prefix}{name}.tar", Body=data)
    manifest = {"task": {"job_id": "ckpt", "round": 1, "task_type": "train", "shard_id": 0, "generation": 0},
                "step": 1, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
    s3.put_object(Bucket=bucket, Key=f"{cp.prefix}{name}.json", Body=json.dumps(manifest).encode())
    # THEN it is skipped, and nothing lands outside the resume directory
    with caplog.at_level(logging.WARNING, logger="shardq.worker"):
        assert checkpoints(s3, bucket, task, attempt=2).restore(tmp_path / "deep" / "r") is None
    assert not (tmp_path / "deep" / "escape").exists() and "cannot unpack" in caplog.text


def test_a_step_must_be_a_non_negative_integer(clients: dict[str, Any], bucket: str, tmp_path: Path) -> None:
    cp = checkpoints(clients["s3"], bucket, a_task())
    with pytest.raises(ValueError, match="step must be an integer >= 0"):
        cp.save(-1, tmp_path, tmp_path / "scratch")
    with pytest.raises(ValueError, match="does not exist"):
        cp.save(1, tmp_path / "missing", tmp_path / "scratch")
    assert keys(clients["s3"], bucket, cp.prefix) == []


def test_a_task_and_a_result_carry_generation_and_resume_only_when_set() -> None:
    task = a_task()
    assert "generation" not in task.to_dict()
    assert ShardTask.from_json(replace(task, generation=3).to_json()).generation == 3
    result = ShardResult.for_task(task, "succeeded")
    assert "resume_step" not in result.to_dict() and "attempts" not in result.to_dict()
    history = [{"attempt": 1, "worker_id": "a", "resume_step": None, "last_step": 4}]
    back = ShardResult.from_json(
        ShardResult.for_task(task, "succeeded", resume_step=4, attempts=history, attempt=2).to_json()
    )
    assert back.resume_step == 4 and back.attempts == history
