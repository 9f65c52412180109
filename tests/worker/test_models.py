"""The model artifact contract (``model_uri`` beside the other outputs) and the streamed FedAvg reduce."""

from __future__ import annotations

import io
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shardq.core.contracts import ShardResult, ValidationError
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.metrics import reduce_inputs
from shardq.core.planning import split_s3
from shardq.core.settings import Settings
from shardq.worker.reduce import ModelError, average_npz, average_stream
from shardq.worker.runtime import Worker
from tests.helpers import TRUSTED, receive_all


def submit(engine: Engine, entrypoint: str, *, job_id: str = "m", shards: int = 2, **extra: Any) -> None:
    engine.submit(
        {
            "job_id": job_id,
            "kind": "data_parallel",
            "dataset": {"num_samples": 15 * shards},
            "sharding": {"shard_count": shards},
            "entrypoint": entrypoint,
            **extra,
        }
    )


def worker(settings: Settings, clients: dict[str, Any], cls: type[Worker] = Worker) -> Worker:
    return cls(
        sqs=clients["sqs"],
        s3=clients["s3"],
        ddb=clients["dynamodb"],
        job_table=settings.job_table,
        task_queue_url=settings.task_queue_url,
        results_queue_url=settings.results_queue_url,
        allow=TRUSTED,
        wait_s=1,
    )


def posted(clients: dict[str, Any], settings: Settings) -> list[ShardResult]:
    msgs = receive_all(clients["sqs"], settings.results_queue_url)
    return sorted((ShardResult.from_json(m["Body"]) for m in msgs), key=lambda r: r.shard_id)


def keys_under(s3: Any, uri: str) -> list[str]:
    bucket, prefix = split_s3(uri)
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def npz(s3: Any, uri: str) -> dict[str, np.ndarray]:
    bucket, key = split_s3(uri)
    with np.load(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())) as data:
        return {n: data[n] for n in data.files}


def attr(record: Any, name: str) -> Any:
    """A job record's field, whether the store hands out dicts or typed records."""
    return record[name] if isinstance(record, dict) else getattr(record, name)


def train_then_reduce(engine: Engine, w: Worker, clients: dict[str, Any], settings: Settings) -> tuple:
    """Run the round's train tasks, record them, run the reduce; (train results, reduce result)."""
    w.run(threading.Event(), max_tasks=2)
    trained = posted(clients, settings)
    assert engine.ingest([Outcome(r) for r in trained]) == []
    w.run(threading.Event(), max_tasks=3)
    (reduced,) = posted(clients, settings)
    return trained, reduced


@pytest.mark.parametrize(
    ("entrypoint", "model_name", "others"),
    [
        ("tests.worker.workloads:several_files", "model.npz", ["logs/train.log", "metrics.json"]),
        ("tests.worker.workloads:explicit_model", "weights.npz", ["optimizer.npz"]),
    ],
)
def test_a_train_function_writing_several_files_reduces_to_the_weighted_average(
    engine: Engine,
    settings: Settings,
    clients: dict[str, Any],
    entrypoint: str,
    model_name: str,
    others: list[str],
) -> None:
    # GIVEN a data_parallel job whose training function saves its model beside other outputs
    submit(engine, entrypoint)
    w = worker(settings, clients)
    # WHEN the shards train and the round is reduced
    trained, reduced = train_then_reduce(engine, w, clients, settings)
    # THEN each result names its model file apart from the outputs, which are all uploaded
    for r in trained:
        prefix = f"jobs/m/round-0000/shard-{r.shard_id:06d}/"
        assert r.model_uri == f"s3://{settings.artifact_bucket}/{prefix}{model_name}"
        assert r.artifact_uri == f"s3://{settings.artifact_bucket}/{prefix}"
        assert keys_under(clients["s3"], r.artifact_uri) == sorted(prefix + n for n in [model_name, *others])
    # AND the reduce averaged the models alone, weighted by num_samples (15 each: w = (0 + 1) / 2)
    assert reduced.status == "succeeded", reduced.error
    assert reduced.artifact_uri == reduced.model_uri
    assert reduced.model_uri is not None and reduced.model_uri.endswith(f"round-0000/reduce/{model_name}")
    model = npz(clients["s3"], reduced.model_uri)
    assert sorted(model) == ["b", "w"]
    assert np.allclose(model["w"], 0.5)
    assert float(model["b"]) == pytest.approx(1.0)
    # AND the job finishes with that model
    assert engine.ingest([Outcome(reduced)]) == []
    job = engine.store.get_job("m")
    assert (attr(job, "status"), attr(job, "model_uri")) == ("SUCCEEDED", reduced.model_uri)


def test_outputs_with_no_recognisable_model_fail_at_once_naming_the_fix(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    submit(engine, "tests.worker.workloads:ambiguous", shards=1)
    worker(settings, clients).run(threading.Event(), max_tasks=1)
    (failed,) = posted(clients, settings)
    # one attempt, not maxReceiveCount: the same outputs would come out every time
    assert (failed.status, failed.attempt) == ("failed", 1)
    assert "ModelError" in (failed.error or "")
    assert "a.npz, b.npz" in (failed.error or "") and "ctx.model_path" in (failed.error or "")


class CountingDownloads(Worker):
    """A real worker that notes how many shard models sit on disk each time it downloads one."""

    on_disk: list[int]

    def _download(self, uri: str, dest: Path) -> Path:
        inputs = dest.parent
        if inputs.name == "inputs":
            self.on_disk.append(sum(1 for p in inputs.iterdir()) if inputs.exists() else 0)
        return super()._download(uri, dest)


def test_the_default_reduce_downloads_one_shard_model_at_a_time(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    submit(engine, "tests.workloads:ok", shards=4)
    w = worker(settings, clients, CountingDownloads)
    assert isinstance(w, CountingDownloads)
    w.on_disk = []
    w.run(threading.Event(), max_tasks=4)
    assert engine.ingest([Outcome(r) for r in posted(clients, settings)]) == []
    w.run(threading.Event(), max_tasks=5)
    (reduced,) = posted(clients, settings)
    # 4 downloads, and before each the previous model was already deleted
    assert w.on_disk == [0, 0, 0, 0]
    # weights 0, 1, 2, 3 with 15 samples each
    assert np.allclose(npz(clients["s3"], reduced.artifact_uri or "")["w"], 1.5)


def test_pt_models_without_pytorch_fail_the_reduce_at_once_saying_how_to_install_it(
    engine: Engine, settings: Settings, clients: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN shard results whose models are .pt files, reduced on a worker without PyTorch
    submit(engine, "tests.workloads:ok", shards=2)
    w = worker(settings, clients)
    w.run(threading.Event(), max_tasks=2)
    trained = posted(clients, settings)
    for r in trained:  # what a PyTorch training function would have saved (never read: no torch)
        bucket, key = split_s3(r.artifact_uri or "")
        clients["s3"].put_object(Bucket=bucket, Key=key.replace(".npz", ".pt"), Body=b"not read")
    as_pt = [
        ShardResult.from_json({**r.to_dict(), "model_uri": (r.artifact_uri or "").replace(".npz", ".pt")})
        for r in trained
    ]
    assert engine.ingest([Outcome(r) for r in as_pt]) == []
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError, as when absent
    # WHEN the reduce runs
    w.run(threading.Event(), max_tasks=3)
    # THEN it fails on its first attempt with the fix, instead of cycling through its receives
    (failed,) = posted(clients, settings)
    assert (failed.task_type, failed.status, failed.attempt) == ("reduce", "failed", 1)
    assert "PyTorch is not installed" in (failed.error or "") and "make torch" in (failed.error or "")


def test_pt_models_average_streamed_with_pytorch(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    torch = pytest.importorskip("torch", reason="optional: `make torch` installs PyTorch")
    submit(engine, "tests.worker.workloads:torch_model")
    _, reduced = train_then_reduce(engine, worker(settings, clients), clients, settings)
    assert reduced.status == "succeeded", reduced.error
    assert reduced.model_uri is not None and reduced.model_uri.endswith("reduce/model.pt")
    bucket, key = split_s3(reduced.model_uri)
    state = torch.load(
        io.BytesIO(clients["s3"].get_object(Bucket=bucket, Key=key)["Body"].read()), weights_only=True
    )
    assert state["w"].dtype == torch.float32  # averaged in float64, saved in the models' own dtype
    assert torch.allclose(state["w"], torch.full((3,), 0.5))
    assert int(state["steps"]) == 10  # integer buffers come from the first model


def test_the_modules_evaluate_hook_scores_the_reduced_model_and_its_metrics_are_the_rounds(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a module with train and evaluate_global (no reduce of its own)
    submit(engine, "tests.worker.evaluated:train")
    # WHEN the round is reduced by the worker's built-in streamed average
    _, reduced = train_then_reduce(engine, worker(settings, clients), clients, settings)
    # THEN evaluate_global saw the averaged model: w averaged in its own float32, steps (an integer
    # counter) taken from the first shard model, never averaged; its metrics are the result's
    assert reduced.status == "succeeded", reduced.error
    assert reduced.metrics == {"w0": 0.5, "steps": 10.0, "w_is_float32": 1.0, "on_cpu": 1.0}
    model = npz(clients["s3"], reduced.model_uri or "")
    assert (model["w"].dtype, model["steps"].dtype, int(model["steps"])) == (np.float32, np.int64, 10)


def test_an_evaluate_hook_returning_no_metrics_fails_the_reduce_at_once_naming_the_fix(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    submit(engine, "tests.worker.evaluated:train", hyperparameters={"broken": True})
    _, reduced = train_then_reduce(engine, worker(settings, clients), clients, settings)
    assert (reduced.task_type, reduced.status, reduced.attempt) == ("reduce", "failed", 1)
    assert "evaluate_global() of tests.worker.evaluated returned list" in (reduced.error or "")
    assert "return a dict of metric name → number" in (reduced.error or "")


# -- the contract and the averaging, without the queues -------------------------------------


def result(shard: int, **extra: Any) -> ShardResult:
    return ShardResult.from_json(
        {"job_id": "j", "round": 0, "shard_id": shard, "task_type": "train", "status": "succeeded", **extra}
    )


def test_results_without_model_uri_still_parse_and_reduce_from_their_artifact() -> None:
    old = result(0, num_samples=10, artifact_uri="s3://b/old/model.npz")  # a pre-model_uri worker's
    new = result(1, num_samples=30, artifact_uri="s3://b/new/", model_uri="s3://b/new/model.npz")
    assert old.model_uri is None and old.model == "s3://b/old/model.npz"
    inputs = reduce_inputs([new, old])
    assert [(m["model_uri"], m["artifact_uri"], m["num_samples"]) for m in inputs["models"]] == [
        ("s3://b/old/model.npz", "s3://b/old/model.npz", 10),
        ("s3://b/new/model.npz", "s3://b/new/model.npz", 30),
    ]
    assert inputs["total_samples"] == 40
    assert json.loads(new.to_json())["model_uri"] == "s3://b/new/model.npz"


def test_a_model_uri_that_is_not_an_s3_uri_is_rejected_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="model_uri must be an s3:// URI"):
        result(0, model_uri="/tmp/model.npz")


def lazily(paths: list[Path], seen: list[Path]) -> Iterator[Path]:
    for p in paths:
        seen.append(p)
        yield p


def test_streamed_average_matches_the_all_at_once_average_bit_for_bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}" / "model.npz")
        paths[-1].parent.mkdir()
        np.savez(paths[-1], w=rng.normal(size=(4, 3)).astype(np.float32), b=np.array(rng.normal()))
    weights = [10, 0, 7, 300, 1]
    seen: list[Path] = []
    streamed = average_stream(lazily(paths, seen), weights, tmp_path / "out")
    whole = average_npz(paths, weights, tmp_path / "whole.npz")
    assert seen == paths and streamed.name == "model.npz"
    with np.load(streamed) as a, np.load(whole) as b:
        assert all(a[n].tobytes() == b[n].tobytes() for n in ("w", "b"))
        # by hand: sum(w_i * x_i) / sum(w_i), in float64
        arrays = [np.load(p)["w"].astype(np.float64) for p in paths]
        assert np.allclose(a["w"], sum(x * w for x, w in zip(arrays, weights, strict=True)) / sum(weights))


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({"w": np.zeros(4)}, "shape"),
        ({"v": np.zeros(3)}, "same arrays"),
    ],
)
def test_shard_models_that_do_not_match_are_refused(
    tmp_path: Path, second: dict[str, Any], message: str
) -> None:
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, w=np.zeros(3))
    np.savez(b, **second)
    with pytest.raises(ModelError, match=message):
        average_stream([a, b], [1, 1], tmp_path / "out")


def test_npz_average_keeps_each_dtype_and_takes_non_floating_arrays_from_the_first_model(
    tmp_path: Path,
) -> None:
    paths = []
    for k, steps in enumerate([7, 9]):
        paths.append(tmp_path / f"{k}.npz")
        np.savez(
            paths[-1],
            w=np.array([1.0, 2.0], dtype=np.float32) * (k + 1),
            half=np.array([0.5 * (k + 1)], dtype=np.float16),
            scale=np.array(2.0 * k),  # 0-d float64
            steps=np.array(steps, dtype=np.int32),
            mask=np.array([True, k == 0]),
        )
    with np.load(average_stream(paths, [1, 3], tmp_path / "out", name="model.npz")) as avg:
        dtypes = {n: avg[n].dtype for n in avg.files}
        assert dtypes == {
            "w": np.float32, "half": np.float16, "scale": np.float64, "steps": np.int32, "mask": np.bool_
        }  # fmt: skip
        assert avg["w"].tolist() == [1.75, 3.5]  # (1 · [1, 2] + 3 · [2, 4]) / 4
        assert avg["half"].tolist() == [0.875] and float(avg["scale"]) == 1.5
        # integers and booleans are never averaged: the first shard model's, as it saved them
        assert int(avg["steps"]) == 7 and avg["mask"].tolist() == [True, True]


def test_an_array_that_is_floating_in_one_model_and_integer_in_another_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, w=np.zeros(3))
    np.savez(b, w=np.zeros(3, dtype=np.int64))
    with pytest.raises(ModelError, match=r"'w' is int64 in b\.npz but float64 in the first shard model"):
        average_stream([a, b], [1, 1], tmp_path / "out")
    with pytest.raises(ModelError, match=r"'w' is float64 in a\.npz but int64 in the first shard model"):
        average_stream([b, a], [1, 1], tmp_path / "out2")


def test_mixed_or_unknown_model_formats_are_refused(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.npz", tmp_path / "b.pt", tmp_path / "c.h5"
    np.savez(a, w=np.zeros(3))
    b.write_bytes(b"x")
    c.write_bytes(b"x")
    with pytest.raises(ModelError, match=r"mix \.npz and \.pt"):
        average_stream([a, b], [1, 1], tmp_path / "out")
    with pytest.raises(ModelError, match=r"cannot average \.h5"):
        average_stream([c], [1], tmp_path / "out")
