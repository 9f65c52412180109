"""A task's checkpoints in the artifact bucket: save (pack, upload, then move the pointer), find the
latest good one, unpack it for the next attempt.

The checkpoint belongs to the task (``shardq.core.checkpoint_keys``): a worker that receives a task
someone else was interrupted on resumes it from the task's own key, with no driver and no shared
disk. What makes that safe:

* **The pointer moves last.** A checkpoint is one tar object plus a small manifest (its sha256,
  size and the task it belongs to); ``latest.json`` names it only after both uploads completed, so
  a worker killed mid-upload leaves the previous checkpoint in force, never a half-written one.
* **Verified before use.** The tar is downloaded and checked against its manifest (size and
  sha256), and the manifest against the task (job, round, type, shard, generation). A truncated or
  foreign checkpoint is skipped with a warning naming it; the one before it (the pointer keeps the
  last two), else a fresh start, is used. Unpacking refuses paths outside the resume directory.
* **A failed save costs the resume, never the task.** Uploads are retried with backoff; if they
  still fail, ``save`` logs it and returns False, and training goes on.
* **Large checkpoints go multipart** (boto3's transfer manager above ``multipart_threshold``).
* The pointer also carries the task's attempt history (who resumed from which step), which the
  result reports (``ShardResult.attempts``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

from shardq.core import checkpoint_keys
from shardq.core.artifacts import read_bytes
from shardq.core.contracts import ShardTask
from shardq.core.messages import MAX_ATTEMPT_HISTORY

log = logging.getLogger("shardq.worker")

POINTER = "latest.json"
# Attempts per upload (the first included) and the first pause between them (doubling).
SAVE_ATTEMPTS = 3
SAVE_BACKOFF_S = 1.0
# boto3's own default threshold; a test lowers it to see a multipart upload.
MULTIPART_THRESHOLD = 8 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024


class BadCheckpoint(ValueError):
    """A checkpoint that cannot be used: truncated, foreign, unreadable or unsafe to unpack."""


class CheckpointUnreadable(RuntimeError):
    """The checkpoint pointer exists but cannot be read now (after the request's and the stream's
    retries): the attempt fails and is retried, instead of training again from step 0."""


@dataclass(frozen=True)
class Restored:
    """What the next attempt resumes from: the unpacked files and the step they were saved at."""

    path: Path
    step: int


def identity(task: ShardTask) -> dict[str, Any]:
    """What a manifest must name to belong to ``task``."""
    return {
        "job_id": task.job_id,
        "round": task.round,
        "task_type": task.task_type,
        "shard_id": task.shard_id,
        "generation": task.generation,
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pack(src: Path, dest: Path) -> None:
    """Pack a directory's files (or one file) into an uncompressed tar: model weights barely
    compress, and gzip would cost seconds of the two-minute Spot notice."""
    with tarfile.open(dest, "w") as tar:
        if src.is_file():
            tar.add(src, arcname=src.name)
            return
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=path.relative_to(src).as_posix(), recursive=False)


def unpack(archive: Path, dest: Path) -> None:
    """Unpack into ``dest``, refusing links, devices and paths that leave it (tarfile's ``data``
    filter): a checkpoint is data another worker wrote, not trusted input."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise BadCheckpoint(f"cannot unpack: {type(exc).__name__}: {exc}") from exc


@dataclass
class TaskCheckpoints:
    """One task's checkpoints, for one attempt.

    Parameters
    ----------
    s3:
        The worker's S3 client.
    bucket:
        The artifact bucket (the task's ``output_prefix`` names it).
    task:
        The task; its identity and ``generation`` make the key.
    attempt, worker_id:
        Recorded in the pointer's attempt history.
    sleep:
        Between upload retries (tests pass a no-op).
    """

    s3: Any
    bucket: str
    task: ShardTask
    attempt: int = 1
    worker_id: str | None = None
    multipart_threshold: int = MULTIPART_THRESHOLD
    sleep: Callable[[float], None] = time.sleep
    logger: logging.Logger | logging.LoggerAdapter = log
    resume_step: int | None = None
    last_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    _pointer: dict[str, Any] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        """The task's key prefix (``checkpoint_keys.task_prefix``)."""
        t = self.task
        return checkpoint_keys.task_prefix(t.job_id, t.round, t.task_type, t.shard_id, t.generation, t.backup)

    def uri(self, key: str) -> str:
        """``s3://bucket/key``, for log lines."""
        return f"s3://{self.bucket}/{key}"

    def _keys(self, step: int) -> tuple[str, str]:
        name = checkpoint_keys.step_name(step)
        return f"{self.prefix}{name}.tar", f"{self.prefix}{name}.json"

    # -- restore -----------------------------------------------------------------------------

    def restore(self, dest: Path) -> Restored | None:
        """The task's latest good checkpoint, unpacked into ``dest``; None on a fresh start.

        Tries the pointer's latest, then its previous; each bad one is skipped with a warning naming
        it and what is used instead. An unreadable pointer is a fresh start (with a warning).
        """
        pointer = self._read_pointer()
        if pointer is None:
            return None
        self._pointer = pointer
        self.history = [a for a in pointer.get("attempts", []) if isinstance(a, dict)]
        steps = [s for s in (pointer.get("step"), pointer.get("previous")) if isinstance(s, int)]
        for i, step in enumerate(steps):
            tar_key, _ = self._keys(step)
            try:
                self._fetch(step, dest)
            except BadCheckpoint as exc:
                shutil.rmtree(dest, ignore_errors=True)
                fallback = (
                    f"resuming from the previous one, {self.uri(self._keys(steps[i + 1])[0])}"
                    if i + 1 < len(steps)
                    else "starting the task fresh"
                )
                self.logger.warning("checkpoint %s is unusable (%s); %s", self.uri(tar_key), exc, fallback)
                continue
            self.resume_step = step
            self.logger.info("resuming from checkpoint %s (step %d)", self.uri(tar_key), step)
            return Restored(dest, step)
        return None

    def _read_pointer(self) -> dict[str, Any] | None:
        key = self.prefix + POINTER
        try:
            body = read_bytes(self.s3, self.bucket, key)
        except Exception as exc:
            if _missing(exc):
                return None
            # Not "start fresh": this attempt would redo the training the checkpoint holds, and its
            # first save would replace the pointer to it. The attempt fails as a failed model
            # download does, and the next one reads the pointer again.
            raise CheckpointUnreadable(
                f"cannot read checkpoint pointer {self.uri(key)} ({exc}); the task is retried "
                "rather than restarted from step 0, which would discard its checkpoints"
            ) from exc
        try:
            pointer = json.loads(body)
            if not isinstance(pointer, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            self.logger.warning(
                "checkpoint pointer %s is unreadable (%s); starting fresh", self.uri(key), exc
            )
            return None
        return pointer

    def _fetch(self, step: int, dest: Path) -> None:
        tar_key, manifest_key = self._keys(step)
        try:
            manifest = json.loads(read_bytes(self.s3, self.bucket, manifest_key))
        except Exception as exc:
            raise BadCheckpoint(f"manifest {self.uri(manifest_key)} unreadable: {exc}") from exc
        if not isinstance(manifest, dict):
            raise BadCheckpoint(f"manifest {self.uri(manifest_key)} is not an object")
        if manifest.get("task") != identity(self.task) or manifest.get("step") != step:
            raise BadCheckpoint(
                f"foreign: its manifest names {manifest.get('task')} step {manifest.get('step')}, "
                f"not this task at step {step}"
            )
        archive = dest.parent / f".{dest.name}.tar"
        archive.parent.mkdir(parents=True, exist_ok=True)
        try:
            try:
                self.s3.download_file(self.bucket, tar_key, str(archive))
            except Exception as exc:
                raise BadCheckpoint(f"download failed: {exc}") from exc
            size = archive.stat().st_size
            if size != manifest.get("size"):
                raise BadCheckpoint(f"truncated: {size} bytes, its manifest says {manifest.get('size')}")
            if _sha256(archive) != manifest.get("sha256"):
                raise BadCheckpoint("sha256 differs from its manifest")
            unpack(archive, dest)
        finally:
            archive.unlink(missing_ok=True)

    # -- save --------------------------------------------------------------------------------

    def save(self, step: int, src: Path, scratch: Path) -> bool:
        """Pack ``src`` and upload it as the task's checkpoint at ``step``, then move the pointer.

        Returns False (after logging why) when the upload still fails after ``SAVE_ATTEMPTS``:
        the task goes on, and only the resume is lost. ``scratch`` holds the tar while it uploads.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"save_checkpoint: step must be an integer >= 0, got {step!r}")
        if not src.exists():
            raise ValueError(f"save_checkpoint: {src} does not exist; save the checkpoint files there first")
        tar_key, manifest_key = self._keys(step)
        scratch.mkdir(parents=True, exist_ok=True)
        archive = scratch / f"checkpoint-{checkpoint_keys.step_name(step)}.tar"
        started = time.monotonic()
        try:
            pack(src, archive)
            size = archive.stat().st_size
            manifest = {"task": identity(self.task), "step": step, "size": size, "sha256": _sha256(archive)}
            ok = self._retried(f"upload {self.uri(tar_key)}", lambda: self._put_file(archive, tar_key))
            ok = ok and self._retried(
                f"upload {self.uri(manifest_key)}", lambda: self._put_json(manifest_key, manifest)
            )
            # Only now does "latest" move: a crash before this line leaves the previous checkpoint.
            ok = ok and self._retried(f"move {self.prefix}{POINTER}", lambda: self._move_pointer(step))
        finally:
            archive.unlink(missing_ok=True)
        if not ok:
            self.logger.error(
                "checkpoint at step %d not saved (uploads kept failing); training goes on, a resume "
                "would start from the previous checkpoint",
                step,
            )
            return False
        self.logger.info(
            "checkpoint at step %d saved to %s (%d bytes, %.2f s)",
            step,
            self.uri(tar_key),
            size,
            time.monotonic() - started,
            extra={"checkpoint_step": step, "checkpoint_bytes": size},
        )
        return True

    def _retried(self, what: str, call: Callable[[], None]) -> bool:
        pause = SAVE_BACKOFF_S
        for attempt in range(1, SAVE_ATTEMPTS + 1):
            try:
                call()
                return True
            except Exception as exc:
                self.logger.warning("%s failed (attempt %d of %d): %s", what, attempt, SAVE_ATTEMPTS, exc)
                if attempt < SAVE_ATTEMPTS:
                    self.sleep(pause)
                    pause *= 2
        return False

    def _put_file(self, path: Path, key: str) -> None:
        config = TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=max(self.multipart_threshold, 5 * 1024 * 1024),
        )
        self.s3.upload_file(str(path), self.bucket, key, Config=config)

    def _put_json(self, key: str, value: dict[str, Any]) -> None:
        body = json.dumps(value, sort_keys=True).encode()
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")

    def _move_pointer(self, step: int) -> None:
        old = self._pointer
        previous = old.get("step")
        if previous == step:  # the same step saved again: keep the one before it as the fallback
            previous = old.get("previous")
        self.last_step = step
        pointer = {"step": step, "previous": previous, "attempts": self._history_with_this_attempt()}
        self._put_json(self.prefix + POINTER, pointer)
        self._pointer = pointer
        # Keep the last two: the one the old pointer kept as its fallback is no longer named.
        stale = old.get("previous")
        if isinstance(stale, int) and stale not in (step, previous):
            self._delete(stale)

    def _history_with_this_attempt(self) -> list[dict[str, Any]]:
        mine = {
            "attempt": self.attempt,
            "worker_id": self.worker_id,
            "resume_step": self.resume_step,
            "last_step": self.last_step,
        }
        earlier = [a for a in self.history if a.get("attempt") != self.attempt]
        return [*earlier, mine][-MAX_ATTEMPT_HISTORY:]

    def earlier_attempts(self) -> list[dict[str, Any]]:
        """The task's earlier attempts its checkpoints recorded (for ``ShardResult.attempts``)."""
        return [a for a in self.history if a.get("attempt") != self.attempt][-MAX_ATTEMPT_HISTORY:]

    def _delete(self, step: int) -> None:
        keys = self._keys(step)
        try:
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys]})
        except Exception as exc:  # the lifecycle rule and the job's finalize clean it up later
            self.logger.warning("could not delete old checkpoint %s: %s", self.uri(keys[0]), exc)


def context_fields(store: TaskCheckpoints, tmp: Path, stop: Any) -> dict[str, Any]:
    """The ``TaskContext`` fields of the checkpoint contract for one attempt: an empty
    ``checkpoint_dir``, the restored ``resume_path``/``resume_step`` (None on a fresh start), the
    ``checkpoint_sink`` behind ``ctx.save_checkpoint`` and the ``stop_flags`` behind ``should_stop``."""
    checkpoint_dir = tmp / "checkpoint"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    restored = store.restore(tmp / "resume")
    return {
        "checkpoint_dir": checkpoint_dir,
        "resume_path": restored.path if restored else None,
        "resume_step": restored.step if restored else None,
        "checkpoint_sink": lambda step, src: store.save(step, src, tmp / ".checkpoint-upload"),
        "stop_flags": stop,
    }


def _missing(exc: Exception) -> bool:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    return code in ("NoSuchKey", "404", "NotFound")
