"""A task's files in the worker's bucket: downloads, ``ctx.fetch``, and publishing ``ctx.output_dir``.

``TaskFiles`` is a part of ``shardq.worker.runtime.Worker`` (a mixin: a test subclass that
overrides ``_download`` sees every download, the reduce's included). The model among the outputs
(``model_file``: ``ctx.model_path``, else the one ``model.*`` file, else the only file) travels as
the result's ``model_uri``; the rest of the outputs are uploaded beside it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from shardq.core.artifacts import read_object
from shardq.core.contracts import ShardTask
from shardq.core.planning import split_s3
from shardq.worker.aws import FatalAwsError, describe, is_fatal
from shardq.worker.context import TaskContext
from shardq.worker.reduce import MODEL_SUFFIXES, ModelError, nonfinite_array

# Objects up to this size move in one request (GetObject / PutObject). boto3's managed transfer
# (``download_file`` / ``upload_file``) starts a thread pool per call and asks HeadObject before it
# downloads: about 20-40 ms a call on the local cloud, which a sweep's worker paid twice per task
# between its tasks (issue #27: ASHA's idle target). Above this size the managed transfer's
# multipart and concurrent ranged parts win, as boto3's own 8 MiB multipart threshold says.
SINGLE_REQUEST_MAX = 8 * 1024 * 1024


def model_file(output_dir: Path, chosen: Path | None) -> Path | None:
    """The model among a task's outputs: ``chosen`` (``ctx.model_path``), else the one top-level
    ``model.<ext>`` file, else the only file; None when there is no file or no way to tell.

    Raises ``ModelError`` when ``chosen`` is not a file under ``output_dir``.
    """
    if chosen is not None:
        path = Path(chosen) if Path(chosen).is_absolute() else output_dir / chosen
        if not path.is_file() or output_dir.resolve() not in path.resolve().parents:
            raise ModelError(
                f"ctx.model_path {chosen} is not a file under ctx.output_dir; save the model there first"
            )
        return path
    named = [p for p in output_dir.iterdir() if p.is_file() and p.stem == "model"]
    known = [p for p in named if p.suffix in MODEL_SUFFIXES]
    for candidates in (known, named):
        if len(candidates) == 1:
            return candidates[0]
    files = [p for p in output_dir.rglob("*") if p.is_file()]
    return files[0] if len(files) == 1 else None


class TaskFiles:
    """The S3 half of a worker: its bucket calls, downloads and the upload of a task's outputs."""

    s3: Any

    def _s3(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A call on the worker's own bucket: a fatal error becomes ``FatalAwsError`` (the worker
        stops); errors from the training function's own data (``ctx.fetch``) stay task failures."""
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if is_fatal(exc):
                raise FatalAwsError(f"{what}: {describe(exc)}") from exc
            raise

    def _download(self, uri: str, dest: Path) -> Path:
        bucket, key = split_s3(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._s3(f"download {uri}", self._get_file, bucket, key, dest)
        return dest

    def _get_file(self, bucket: str, key: str, dest: Path) -> None:
        """One GetObject streamed to ``dest`` for an object up to ``SINGLE_REQUEST_MAX``; a larger
        one is left unread and fetched by the managed, concurrent download (which retries its own
        streams).

        The body goes to a temporary name first and is renamed once complete (as the managed
        download does): a stream cut short (botocore checks ``ContentLength``) leaves no partial
        file under ``dest`` and is read again (``read_object``)."""

        def stream(response: dict[str, Any]) -> None:
            body = response["Body"]
            if int(response.get("ContentLength") or 0) > SINGLE_REQUEST_MAX:
                body.close()
                self.s3.download_file(bucket, key, str(dest))
                return
            part = dest.with_name(dest.name + ".part")
            try:
                with body, part.open("wb") as out:
                    for chunk in body.iter_chunks(1024 * 1024):
                        out.write(chunk)
                part.replace(dest)
            finally:
                part.unlink(missing_ok=True)

        read_object(self.s3, bucket, key, stream)

    def _fetcher(self, tmp: Path) -> Callable[[str], Path]:
        def fetch(uri: str) -> Path:
            if uri.startswith("s3://"):
                bucket, key = split_s3(uri)
                dest = tmp / "data" / bucket / key
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download_file(bucket, key, str(dest))
                return dest
            return Path(uri.removeprefix("file://"))

        return fetch

    def _publish(
        self, task: ShardTask, ctx: TaskContext, outcome: dict[str, Any], tlog: logging.LoggerAdapter
    ) -> dict[str, Any]:
        """Upload ``ctx.output_dir``; name the model (``model_uri``) and the artifact in ``outcome``."""
        model = model_file(ctx.output_dir, ctx.model_path)
        if model is not None and task.kind == "data_parallel":
            bad = nonfinite_array(model)
            if bad is not None:
                raise ModelError(
                    f"array {bad!r} of the model {model.name} holds NaN or inf: the training diverged; "
                    "the shard fails so its model never enters the average (lower the learning rate, "
                    "clip gradients)"
                )
        files = sorted(p for p in ctx.output_dir.rglob("*") if p.is_file())
        if model is None and files and (task.task_type == "reduce" or task.kind == "data_parallel"):
            names = ", ".join(p.relative_to(ctx.output_dir).as_posix() for p in files[:6])
            raise ModelError(
                f"ctx.output_dir holds {len(files)} files ({names}) and none is the model: name it "
                "model.npz / model.pt, or set ctx.model_path to it"
            )
        if not files and task.task_type == "train" and task.kind != "map":
            tlog.warning("the training function saved nothing under ctx.output_dir; no model to reduce")
        uploaded = {p: self._upload(p, ctx.output_dir, task.output_prefix) for p in files}
        if model is not None:
            outcome.setdefault("model_uri", uploaded[model])
        if "artifact_uri" not in outcome and uploaded:
            if len(uploaded) == 1:
                outcome["artifact_uri"] = next(iter(uploaded.values()))
            elif task.task_type == "reduce":
                # A reduce's artifact is its model: the next round starts from artifact_uri.
                outcome["artifact_uri"] = outcome["model_uri"]
            else:
                outcome["artifact_uri"] = task.output_prefix
        return outcome

    def _upload(self, path: Path, out_dir: Path, prefix: str) -> str:
        bucket, key_prefix = split_s3(prefix)
        key = key_prefix + path.relative_to(out_dir).as_posix()
        if path.stat().st_size <= SINGLE_REQUEST_MAX:  # one PutObject (see SINGLE_REQUEST_MAX)
            with path.open("rb") as body:
                self._s3(f"upload {path.name}", self.s3.put_object, Bucket=bucket, Key=key, Body=body)
        else:  # boto3's managed transfer: multipart above 8 MiB
            self._s3(f"upload {path.name}", self.s3.upload_file, str(path), bucket, key)
        return f"s3://{bucket}/{key}"


def uri_name(uri: str) -> str:
    """The last part of a URI's path: the file name a download keeps."""
    return Path(urlparse(uri).path).name
