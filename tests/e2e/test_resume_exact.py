"""Resume is exact (issue #24): a task SIGTERMed mid-epoch, or SIGKILLed after its k-th checkpoint,
resumed by another real worker process from the task's checkpoint in the bucket, ends with the
model bits of the task never interrupted.

Real ``shardq worker`` processes (tests/chaos/harness.py ``WorkerPool``, which replaces the one a
test kills), the real aggregator behind the in-process event source (``Pump``), the local cloud's
queues, table and bucket. The examples run unchanged, paced at their batch boundaries so a test
can signal a worker mid-task (tests/e2e/paced.py). What makes the bits equal is the examples'
(examples/checkpointing.py): weights, optimizer, generator states and the place in the data are
all in the checkpoint, and PyTorch runs one intra-op thread.
"""

from __future__ import annotations

import io
import signal
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from shardq.core.planning import split_s3
from shardq.worker.runtime import Worker
from tests.chaos.conftest import Rig, rig  # noqa: F401  (the fixture, shared with the chaos tests)
from tests.chaos.harness import run_until, settle
from tests.e2e.paced import events
from tests.helpers import TRUSTED, receive_all

pytestmark = pytest.mark.local_cloud

# 600 samples in batches of 64: 10 batches an epoch, 40 in all; a checkpoint every 5; 0.15 s at
# each batch boundary (so the second attempt still runs ≥ 2 s after its second checkpoint: at 0.08 s
# a loaded machine's chaos poll once came after it had finished, and nobody was SIGKILLed).
HYPERPARAMETERS = {"lr": 0.05, "epochs": 4, "batch_size": 64, "checkpoint_every": 5, "pace_s": 0.15}


def payload(job_id: str, example: str) -> dict[str, Any]:
    """One round of one shard of ``examples.<example>``, paced (tests/e2e/paced.py)."""
    return {
        "job_id": job_id,
        "kind": "data_parallel",
        "dataset": {"uri": "synthetic://linear?dim=4&noise=0.05&seed=21", "num_samples": 600},
        "sharding": {"shard_count": 1},
        "rounds": 1,
        "hyperparameters": HYPERPARAMETERS,
        "entrypoint": f"tests.e2e.paced:{example}",
    }


def model_arrays(s3: Any, uri: str) -> dict[str, bytes]:
    """A model in the bucket (``.npz`` or a torch ``state_dict``) as raw bytes per array."""
    bucket, key = split_s3(uri)
    body = io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    if uri.endswith(".npz"):
        with np.load(body) as m:
            return {k: m[k].tobytes() for k in m.files}
    import torch

    return {k: v.numpy().tobytes() for k, v in torch.load(body, weights_only=True).items()}


def uninterrupted(r: Rig, request: dict[str, Any]) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The same request run without interruption (an in-process worker, no pacing): the shard's
    model and the final model."""
    job_id = request["job_id"] + "-whole"
    r.engine.submit({**request, "job_id": job_id, "hyperparameters": {**HYPERPARAMETERS, "pace_s": 0}})
    worker = Worker(
        allow=TRUSTED,
        sqs=r.clients["sqs"],
        s3=r.clients["s3"],
        task_queue_url=r.settings.task_queue_url,
        results_queue_url=r.settings.results_queue_url,
        wait_s=0,
    )

    def work() -> None:
        while worker.poll_once():
            pass

    job = run_until(r.engine, job_id, r.pump, chaos=work, timeout=60)
    assert job.status == "SUCCEEDED", job
    (shard,) = [row.result for row in r.engine.store.results(job_id, 0)]
    assert shard.model_uri is not None
    return model_arrays(r.clients["s3"], shard.model_uri), model_arrays(r.clients["s3"], job.model_uri)


def storm(r: Rig) -> Callable[[], None]:
    """The chaos step: SIGTERM the first attempt at its 14th batch boundary (mid-epoch 2), then
    SIGKILL the second right after it saved two checkpoints of its own."""
    sent: list[int] = []

    def chaos() -> None:
        log = events(r.dir)
        starts = [e for e in log if e["event"] == "start"]
        mine = [e for e in log if starts and e["pid"] == starts[-1]["pid"]]
        if len(sent) == 0 and len(starts) == 1 and sum(e["event"] == "boundary" for e in mine) >= 14:
            sig = signal.SIGTERM
        elif len(sent) == 1 and len(starts) == 2 and sum(e["event"] == "checkpoint" for e in mine) >= 2:
            sig = signal.SIGKILL
        else:
            return
        proc = r.pool.by_pid(starts[-1]["pid"])
        assert proc is not None, f"worker {starts[-1]['pid']} is not running"
        proc.send_signal(sig)
        sent.append(proc.pid)
        if sig == signal.SIGTERM:
            assert proc.wait(timeout=20) == 0  # it checkpointed, released the task and exited cleanly

    return chaos


@pytest.mark.parametrize("example", ["linear", "torch_mlp"])
def test_a_task_sigtermed_mid_epoch_then_sigkilled_after_a_checkpoint_ends_with_the_same_bits(
    rig: Callable[..., Rig],  # noqa: F811
    example: str,
) -> None:
    if example == "torch_mlp":
        pytest.importorskip("torch", reason="optional: `make torch` installs PyTorch")
    # GIVEN two worker processes with a 3 s lease (a vanished worker's task is back within it),
    # and the task's result when nothing interrupts it
    r = rig(task_visibility_s=3, worker_args=("--visibility-timeout", "3", "--grace-seconds", "15"))
    request = payload(f"resume-{example}", example)
    want_shard, want_final = uninterrupted(r, request)
    r.engine.submit(request)
    r.pool.start()
    # WHEN its worker gets SIGTERM mid-epoch, and the worker that resumed it is SIGKILLed after
    # saving two checkpoints of its own
    job = run_until(r.engine, request["job_id"], r.pump, pool=r.pool, chaos=storm(r), timeout=90)
    settle(r.pump, pool=r.pool)
    # THEN three attempts ran, each on another worker: the second resumed mid-epoch where the
    # SIGTERM stopped the first, the third from the last checkpoint the killed one saved
    first, second, third = [e for e in events(r.dir) if e["event"] == "start"]
    assert len({first["pid"], second["pid"], third["pid"]}) == 3
    assert first["resume_step"] is None
    assert 13 <= second["resume_step"] < 20
    saved = [e["step"] for e in events(r.dir) if e["event"] == "checkpoint" and e["pid"] == second["pid"]]
    # (or the one after it, if the kill landed between a save and its log line)
    assert third["resume_step"] in (saved[-1], saved[-1] + 5) and saved[-1] >= 20
    assert 0 in r.pool.exit_codes and -signal.SIGKILL in r.pool.exit_codes
    # AND the shard's model and the final model are bit for bit the uninterrupted run's
    assert job.status == "SUCCEEDED", job
    (shard,) = [row.result for row in r.engine.store.results(request["job_id"], 0)]
    assert model_arrays(r.clients["s3"], shard.model_uri) == want_shard
    assert model_arrays(r.clients["s3"], job.model_uri) == want_final
    assert receive_all(r.clients["sqs"], r.settings.task_queue_url) == []
