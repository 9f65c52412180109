"""Server strategies in the default reduce (FedAvgM, FedAdam, FedYogi) on the local cloud, checked
against steps computed by hand, one and two rounds; the server state kept between rounds.

Every test trains two shards with ``tests.workloads:ok`` (15 samples each; shard k saves w = [k, k, k],
b = 1), so each round's FedAvg average is x̄ = (w = [0.5, 0.5, 0.5], b = 1.0) whatever the global
model. The job starts from x0 = (w = [1.0, 0.5, 0.0], b = 0.0): Δ0 = x̄ − x0 = (w = [-0.5, 0, 0.5], b = 1).
"""

from __future__ import annotations

import io
import json
import threading
from typing import Any

import numpy as np
import pytest

from shardq.core.contracts import ShardResult
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.planning import split_s3
from shardq.core.settings import Settings
from tests.worker.test_models import npz, posted, worker

X0: dict[str, Any] = {"w": np.array([1.0, 0.5, 0.0]), "b": np.array(0.0)}


def start(
    engine: Engine,
    settings: Settings,
    clients: dict[str, Any],
    strategy: dict[str, Any],
    *,
    rounds: int,
    entrypoint: str = "tests.workloads:ok",
    init: bytes | None = None,
    suffix: str = ".npz",
    with_init: bool = True,
) -> None:
    """Upload the starting model (``init``, else x0 as .npz) and submit a 2-shard job with ``strategy``."""
    model: dict[str, Any] = {}
    if with_init:
        buf = io.BytesIO()
        np.savez(buf, **X0)
        key = f"init/model{suffix}"
        clients["s3"].put_object(Bucket=settings.artifact_bucket, Key=key, Body=init or buf.getvalue())
        model = {"init_uri": f"s3://{settings.artifact_bucket}/{key}"}
    engine.submit(
        {
            "job_id": "s",
            "kind": "data_parallel",
            "dataset": {"num_samples": 30},
            "sharding": {"shard_count": 2},
            "rounds": rounds,
            "entrypoint": entrypoint,
            "strategy": strategy,
            **({"model": model} if model else {}),
        }
    )


def run_rounds(
    engine: Engine, settings: Settings, clients: dict[str, Any], rounds: int, *, last: bool = True
) -> list[ShardResult]:
    """Train and reduce ``rounds`` rounds with one worker; the reduce results, in order (``last``:
    the job's final rounds, so it ends SUCCEEDED with the last reduce's model)."""
    w = worker(settings, clients)
    done, reduces = 0, []
    for _ in range(rounds):
        done += 2
        w.run(threading.Event(), max_tasks=done)
        trained = posted(clients, settings)
        assert [r.status for r in trained] == ["succeeded"] * 2
        assert engine.ingest([Outcome(r) for r in trained]) == []
        done += 1
        w.run(threading.Event(), max_tasks=done)
        (reduced,) = posted(clients, settings)
        assert reduced.status == "succeeded", reduced.error
        assert engine.ingest([Outcome(reduced)]) == []
        reduces.append(reduced)
    if not last:
        return reduces
    job = engine.store.get_job("s")
    assert (job.status, job.model_uri) == ("SUCCEEDED", reduces[-1].model_uri)
    return reduces


def state_of(clients: dict[str, Any], reduced: ShardResult) -> dict[str, np.ndarray]:
    assert reduced.model_uri is not None
    return npz(clients["s3"], reduced.model_uri.rsplit("/", 1)[0] + "/server_state.npz")


def close(actual: dict[str, np.ndarray], w: list[float], b: float) -> None:
    assert np.allclose(actual["w"], w, rtol=0, atol=1e-12), actual["w"]
    assert float(actual["b"]) == pytest.approx(b, abs=1e-12)


def test_fedavgm_steps_with_server_momentum_as_flower_does(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    start(engine, settings, clients, {"name": "fedavgm", "server_lr": 0.5, "momentum": 0.5}, rounds=2)
    r0, r1 = run_rounds(engine, settings, clients, 2)
    # round 0: g0 = x0 - x̄ = (w [0.5, 0, -0.5], b -1); v1 = g0 (no momentum yet)
    #          x1 = x0 - 0.5 v1 = (w [0.75, 0.5, 0.25], b 0.5)
    close(npz(clients["s3"], r0.model_uri or ""), [0.75, 0.5, 0.25], 0.5)
    close({k.removeprefix("momentum/"): v for k, v in state_of(clients, r0).items()}, [0.5, 0, -0.5], -1.0)
    # round 1: g1 = x1 - x̄ = (w [0.25, 0, -0.25], b -0.5); v2 = 0.5 v1 + g1 = (w [0.5, 0, -0.5], b -1)
    #          x2 = x1 - 0.5 v2 = (w [0.5, 0.5, 0.5], b 1.0)
    close(npz(clients["s3"], r1.model_uri or ""), [0.5, 0.5, 0.5], 1.0)
    close({k.removeprefix("momentum/"): v for k, v in state_of(clients, r1).items()}, [0.5, 0, -0.5], -1.0)


# server_lr η = 0.1, β1 = 0.5, β2 = 0.75, τ = 0.5 (τ outside the square root, no bias correction)
ADAPTIVE = {"server_lr": 0.1, "beta1": 0.5, "beta2": 0.75, "tau": 0.5}
# Round 0, the same for FedAdam and FedYogi (v0 = 0, so Yogi's sign(0 - Δ²) = -1 adds like Adam):
#   m1 = 0.5 Δ0 = (w [-0.25, 0, 0.25], b 0.5);  v1 = 0.25 Δ0² = (w [0.0625, 0, 0.0625], b 0.25)
#   x1 = x0 + 0.1 m1 / (√v1 + 0.5) = (w [1 - 0.025/0.75, 0.5, 0.025/0.75], b 0.05/1.0)
X1_W, X1_B = [1 - 1 / 30, 0.5, 1 / 30], 0.05
# Round 1: Δ1 = x̄ - x1 = (w [-7/15, 0, 7/15], b 0.95);  m2 = 0.5 m1 + 0.5 Δ1 = (w [∓0.358333], b 0.725)
M2_W, M2_B = [-0.125 - 7 / 30, 0.0, 0.125 + 7 / 30], 0.25 + 0.475


@pytest.mark.parametrize(
    ("name", "v2_w", "v2_b"),
    [
        # FedAdam: v2 = 0.75 v1 + 0.25 Δ1² = (w 0.046875 + 0.25·49/225, b 0.1875 + 0.25·0.9025)
        ("fedadam", 0.046875 + 0.25 * 49 / 225, 0.1875 + 0.25 * 0.9025),
        # FedYogi: v1 < Δ1² so sign = -1: v2 = v1 + 0.25 Δ1² = (w 0.0625 + 0.25·49/225, b 0.25 + 0.25·0.9025)
        ("fedyogi", 0.0625 + 0.25 * 49 / 225, 0.25 + 0.25 * 0.9025),
    ],
)
def test_adaptive_strategies_step_and_keep_their_state_between_rounds(
    engine: Engine, settings: Settings, clients: dict[str, Any], name: str, v2_w: float, v2_b: float
) -> None:
    start(engine, settings, clients, {"name": name, **ADAPTIVE}, rounds=2)
    r0, r1 = run_rounds(engine, settings, clients, 2)
    close(npz(clients["s3"], r0.model_uri or ""), X1_W, X1_B)
    s0 = state_of(clients, r0)
    assert sorted(s0) == ["m/b", "m/w", "v/b", "v/w"]
    close({"w": s0["m/w"], "b": s0["m/b"]}, [-0.25, 0, 0.25], 0.5)
    close({"w": s0["v/w"], "b": s0["v/b"]}, [0.0625, 0, 0.0625], 0.25)
    # round 1 started from the state round 0 kept
    s1 = state_of(clients, r1)
    close({"w": s1["m/w"], "b": s1["m/b"]}, M2_W, M2_B)
    close({"w": s1["v/w"], "b": s1["v/b"]}, [v2_w, 0, v2_w], v2_b)
    # x2 = x1 + 0.1 m2 / (√v2 + 0.5)
    step_w = 0.1 * M2_W[2] / (np.sqrt(v2_w) + 0.5)
    expected_w = [X1_W[0] - step_w, 0.5, X1_W[2] + step_w]
    close(npz(clients["s3"], r1.model_uri or ""), expected_w, X1_B + 0.1 * M2_B / (np.sqrt(v2_b) + 0.5))


def test_a_lost_server_state_restarts_at_zero_instead_of_failing_the_job(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    start(engine, settings, clients, {"name": "fedadam", **ADAPTIVE}, rounds=2)
    (r0,) = run_rounds(engine, settings, clients, 1, last=False)
    bucket, key = split_s3((r0.model_uri or "").rsplit("/", 1)[0] + "/server_state.npz")
    clients["s3"].delete_object(Bucket=bucket, Key=key)  # e.g. a lifecycle rule took it
    (r1,) = run_rounds(engine, settings, clients, 1)
    # round 1 as a first round from x1: m = 0.5 Δ1, v = 0.25 Δ1² (Δ1 = w [-7/15, 0, 7/15], b 0.95)
    s1 = state_of(clients, r1)
    close({"w": s1["m/w"], "b": s1["m/b"]}, [-7 / 30, 0, 7 / 30], 0.475)
    close({"w": s1["v/w"], "b": s1["v/b"]}, [0.25 * 49 / 225, 0, 0.25 * 49 / 225], 0.25 * 0.9025)


@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_fedavg_and_fedprox_reduce_as_the_plain_average(
    engine: Engine, settings: Settings, clients: dict[str, Any], name: str
) -> None:
    start(engine, settings, clients, {"name": name}, rounds=1)
    (r0,) = run_rounds(engine, settings, clients, 1)
    close(npz(clients["s3"], r0.model_uri or ""), [0.5, 0.5, 0.5], 1.0)
    bucket, key = split_s3(r0.model_uri or "")
    listed = clients["s3"].list_objects_v2(Bucket=bucket, Prefix=key.rsplit("/", 1)[0] + "/")["Contents"]
    assert [o["Key"].rsplit("/", 1)[1] for o in listed] == ["model.npz"]  # no server state


def test_a_server_strategy_without_a_global_model_fails_the_reduce_naming_the_fix(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # The splitter refuses such a request up front (tests/core/test_rounds.py); the worker is the
    # second line, for a reduce task that reaches it without the global model all the same.
    start(engine, settings, clients, {"name": "fedadam"}, rounds=1)
    w = worker(settings, clients)
    w.run(threading.Event(), max_tasks=2)
    assert engine.ingest([Outcome(r) for r in posted(clients, settings)]) == []
    sqs, url = clients["sqs"], settings.task_queue_url
    (message,) = sqs.receive_message(QueueUrl=url, AttributeNames=["All"])["Messages"]
    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    body = {**json.loads(message["Body"]), "init_model_uri": None}
    sqs.send_message(
        QueueUrl=url,
        MessageBody=json.dumps(body),
        MessageGroupId=message["Attributes"]["MessageGroupId"],
        MessageDeduplicationId="no-global-model",
    )
    w.run(threading.Event(), max_tasks=3)
    (failed,) = posted(clients, settings)
    # at once: every attempt would lack it alike
    assert (failed.task_type, failed.status, failed.attempt) == ("reduce", "failed", 1)
    assert "has no init_model_uri" in (failed.error or "") and "model.init_uri" in (failed.error or "")


def test_fedavgm_on_pytorch_state_dicts(engine: Engine, settings: Settings, clients: dict[str, Any]) -> None:
    torch = pytest.importorskip("torch", reason="optional: `make torch` installs PyTorch")
    buf = io.BytesIO()
    torch.save({"w": torch.tensor([1.0, 0.5, 0.0]), "steps": torch.tensor(0)}, buf)
    start(
        engine,
        settings,
        clients,
        {"name": "fedavgm", "server_lr": 0.5, "momentum": 0.5},
        rounds=1,
        entrypoint="tests.worker.workloads:torch_model",
        init=buf.getvalue(),
        suffix=".pt",
    )
    (r0,) = run_rounds(engine, settings, clients, 1)
    bucket, key = split_s3(r0.model_uri or "")
    assert key.endswith("reduce/model.pt")
    state = torch.load(
        io.BytesIO(clients["s3"].get_object(Bucket=bucket, Key=key)["Body"].read()), weights_only=True
    )
    # x̄ = [0.5]*3; x1 = x0 - 0.5 (x0 - x̄) = [0.75, 0.5, 0.25], in the models' float32
    assert state["w"].dtype == torch.float32
    assert torch.allclose(state["w"], torch.tensor([0.75, 0.5, 0.25]))
    assert int(state["steps"]) == 10  # integer buffers come from the average (the first model)
    assert np.allclose(state_of(clients, r0)["momentum/w"], [0.5, 0.0, -0.5])
