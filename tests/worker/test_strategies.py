"""Server strategies in the default reduce (FedAvgM, FedAdam, FedYogi) on the local cloud, checked
against steps computed by hand, one and two rounds; the server state kept between rounds.

Every test trains two shards with ``tests.workloads:ok`` (15 samples each; shard k saves w = [k, k, k],
b = 1), so each round's FedAvg average is x̄ = (w = [0.5, 0.5, 0.5], b = 1.0) whatever the global
model. The job starts from x0 = (w = [1.0, 0.5, 0.0], b = 0.0): Δ0 = x̄ − x0 = (w = [-0.5, 0, 0.5], b = 1).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shardq.core.contracts import STRATEGIES, ShardResult
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.planning import split_s3
from shardq.core.settings import Settings
from shardq.worker.strategies import Arrays, server_step
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
    engine: Engine,
    settings: Settings,
    clients: dict[str, Any],
    rounds: int,
    *,
    last: bool = True,
    shards: int = 2,
    job_id: str = "s",
) -> list[ShardResult]:
    """Train and reduce ``rounds`` rounds with one worker; the reduce results, in order (``last``:
    the job's final rounds, so it ends SUCCEEDED with the last reduce's model)."""
    w = worker(settings, clients)
    done, reduces = 0, []
    for _ in range(rounds):
        done += shards
        w.run(threading.Event(), max_tasks=done)
        trained = posted(clients, settings)
        assert [r.status for r in trained] == ["succeeded"] * shards, [r.error for r in trained]
        assert engine.ingest([Outcome(r) for r in trained]) == []
        done += 1
        w.run(threading.Event(), max_tasks=done)
        (reduced,) = posted(clients, settings)
        assert reduced.status == "succeeded", reduced.error
        assert engine.ingest([Outcome(reduced)]) == []
        reduces.append(reduced)
    if not last:
        return reduces
    job = engine.store.get_job(job_id)
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


# server_lr η = 0.1, β1 = 0.5, β2 = 0.75, τ = 0.5 (τ outside the square root)
ADAPTIVE = {"server_lr": 0.1, "beta1": 0.5, "beta2": 0.75, "tau": 0.5}
# The rate each round steps with. FedAdam's is Flower's bias-corrected η·√(1 − β2^t) / (1 − β1^t),
# t = server_round + 1 with Flower's server_round = shardq round + 1; FedYogi's is η itself.
RATES = {
    "fedadam": [0.1 * np.sqrt(1 - 0.75**2) / (1 - 0.5**2), 0.1 * np.sqrt(1 - 0.75**3) / (1 - 0.5**3)],
    "fedyogi": [0.1, 0.1],
}


def adaptive_by_hand(name: str) -> list[dict[str, Any]]:
    """Both rounds of FedAdam / FedYogi on this job, step by step as Flower's ``aggregate_train`` writes
    them: per round the model and the state (m, v) the reduce must produce."""
    r0, r1 = RATES[name]
    # Round 0 (v0 = 0, so Yogi's sign(0 − Δ²) = −1 adds like Adam): Δ0 = (w [-0.5, 0, 0.5], b 1)
    m1 = {"w": np.array([-0.25, 0.0, 0.25]), "b": 0.5}  # 0.5 Δ0
    v1 = {"w": np.array([0.0625, 0.0, 0.0625]), "b": 0.25}  # 0.25 Δ0²
    # x1 = x0 + r0 m1 / (√v1 + 0.5): √v1 + 0.5 = (w 0.75, b 1.0)
    x1 = {"w": np.array([1 - r0 * 0.25 / 0.75, 0.5, r0 * 0.25 / 0.75]), "b": r0 * 0.5}
    # Round 1: Δ1 = x̄ − x1, x̄ = (w [0.5, 0.5, 0.5], b 1)
    d1 = {"w": np.array([0.5, 0.5, 0.5]) - x1["w"], "b": 1.0 - x1["b"]}
    m2 = {k: 0.5 * m1[k] + 0.5 * d1[k] for k in d1}
    if name == "fedadam":
        v2 = {k: 0.75 * v1[k] + 0.25 * d1[k] ** 2 for k in d1}
    else:  # Yogi: v − (1 − β2) Δ² sign(v − Δ²); here v1 < Δ1² (w ends and b) or both 0 (w middle)
        v2 = {k: v1[k] - 0.25 * d1[k] ** 2 * np.sign(v1[k] - d1[k] ** 2) for k in d1}
    x2 = {k: x1[k] + r1 * m2[k] / (np.sqrt(v2[k]) + 0.5) for k in d1}
    return [{"x": x1, "m": m1, "v": v1}, {"x": x2, "m": m2, "v": v2}]


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_adaptive_strategies_step_as_flower_does_and_keep_their_state_between_rounds(
    engine: Engine, settings: Settings, clients: dict[str, Any], name: str
) -> None:
    start(engine, settings, clients, {"name": name, **ADAPTIVE}, rounds=2)
    reduces = run_rounds(engine, settings, clients, 2)
    for reduced, want in zip(reduces, adaptive_by_hand(name), strict=True):
        close(npz(clients["s3"], reduced.model_uri or ""), list(want["x"]["w"]), want["x"]["b"])
        state = state_of(clients, reduced)  # round 1 started from the state round 0 kept
        assert sorted(state) == ["m/b", "m/w", "v/b", "v/w"]
        for slot in ("m", "v"):
            close({"w": state[f"{slot}/w"], "b": state[f"{slot}/b"]}, list(want[slot]["w"]), want[slot]["b"])
    # the literal round-0 step, so the derivation above cannot drift with the code: FedYogi steps
    # 0.1 · 0.25 / 0.75 = 1/30 on w; FedAdam the bias-corrected 0.1 · √0.4375 / 0.75 times that
    step = adaptive_by_hand(name)[0]["x"]["w"][2]
    assert step == pytest.approx(1 / 30 if name == "fedyogi" else np.sqrt(0.4375) / 0.75 / 30, abs=1e-15)


def test_a_lost_server_state_restarts_at_zero_instead_of_failing_the_job(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    start(engine, settings, clients, {"name": "fedadam", **ADAPTIVE}, rounds=2)
    (r0,) = run_rounds(engine, settings, clients, 1, last=False)
    bucket, key = split_s3((r0.model_uri or "").rsplit("/", 1)[0] + "/server_state.npz")
    clients["s3"].delete_object(Bucket=bucket, Key=key)  # e.g. a lifecycle rule took it
    (r1,) = run_rounds(engine, settings, clients, 1)
    # round 1 as a first round from x1: m = 0.5 Δ1, v = 0.25 Δ1² (Δ1 = x̄ − x1)
    x1 = adaptive_by_hand("fedadam")[0]["x"]
    d1_w, d1_b = 0.5 - x1["w"], 1.0 - x1["b"]
    s1 = state_of(clients, r1)
    close({"w": s1["m/w"], "b": s1["m/b"]}, list(0.5 * d1_w), 0.5 * d1_b)
    close({"w": s1["v/w"], "b": s1["v/b"]}, list(0.25 * d1_w**2), 0.25 * d1_b**2)


# -- the same arrays through Flower's own strategy classes -----------------------------------

# Flower lives in its own virtualenv (`make flower`: requirements-flower.txt pins flwr); a run of
# its strategies there is the reference. SHARDQ_FLOWER_PYTHON points at another Flower install.
FLOWER_PYTHON = Path(
    os.environ.get("SHARDQ_FLOWER_PYTHON") or Path(__file__).resolve().parents[2] / ".venv/flower/bin/python"
)
# Runs in Flower's interpreter: the rounds of one strategy, fed the spec on stdin, models on stdout.
FLOWER_ROUNDS = """
import json, sys
import numpy as np
import flwr
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvgM, FedYogi

class Reply:  # the part of a reply Message aggregate_train reads (Flower's own tests use a Mock)
    def __init__(self, arrays):
        self.content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 1})})
    def has_error(self):
        return False
    def has_content(self):
        return True

spec = json.load(sys.stdin)
p, name = spec["params"], spec["name"]
record = lambda d: ArrayRecord({k: Array(np.asarray(v, dtype=np.float64)) for k, v in d.items()})
if name == "fedavgm":
    strategy = FedAvgM(server_learning_rate=p["server_lr"], server_momentum=p["momentum"])
else:
    cls = FedAdam if name == "fedadam" else FedYogi
    strategy = cls(eta=p["server_lr"], beta_1=p["beta1"], beta_2=p["beta2"], tau=p["tau"])
x, out = spec["x0"], []
for r, average in enumerate(spec["averages"]):
    # what configure_train keeps: FedAvgM the first round's arrays, FedOpt each round's
    if name == "fedavgm" and strategy.current_arrays is None:
        strategy.current_arrays = record(x)
    elif name != "fedavgm":
        strategy.current_arrays = {k: np.asarray(v, dtype=np.float64) for k, v in x.items()}
    # one reply of weight 1: Flower's FedAvg of it is exactly `average`, shardq's x̄
    arrays, _ = strategy.aggregate_train(r + 1, [Reply(record(average))])
    x = {k: a.numpy().tolist() for k, a in arrays.items()}
    out.append(x)
json.dump({"flwr": flwr.__version__, "rounds": out}, sys.stdout)
"""
FLOWER_PARAMS = {
    "fedavgm": {"server_lr": 0.7, "momentum": 0.9},
    "fedadam": {"server_lr": 0.05, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
    "fedyogi": {"server_lr": 0.05, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
}


def random_rounds(rounds: int = 4) -> tuple[Arrays, list[Arrays]]:
    """A starting model and each round's FedAvg average (a matrix, a vector, a 0-d entry)."""
    rng = np.random.default_rng(22)
    shapes = {"w": (3, 4), "b": (4,), "scale": ()}
    x0 = {k: rng.normal(size=s) for k, s in shapes.items()}
    return x0, [{k: rng.normal(size=s) for k, s in shapes.items()} for _ in range(rounds)]


def shardq_rounds(name: str, x0: Arrays, averages: list[Arrays]) -> list[Arrays]:
    """The rounds as the worker's reduce runs them: each from the last model and the kept state."""
    x, state, out = x0, {}, []
    for r, average in enumerate(averages):
        x, state = server_step(name, FLOWER_PARAMS[name], x, average, state, round_no=r)
        out.append(x)
    return out


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi"])
def test_server_steps_equal_flowers_own_strategies_on_the_same_arrays(name: str) -> None:
    if not FLOWER_PYTHON.exists():
        pytest.skip(f"Flower is not installed at {FLOWER_PYTHON}: `make flower` builds it (.venv/flower)")
    x0, averages = random_rounds()
    spec = {"name": name, "params": FLOWER_PARAMS[name], "x0": x0, "averages": averages}
    run = subprocess.run(
        [str(FLOWER_PYTHON), "-c", FLOWER_ROUNDS],
        input=json.dumps(spec, default=lambda a: a.tolist()),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    flower = json.loads(run.stdout)
    for r, (ours, theirs) in enumerate(zip(shardq_rounds(name, x0, averages), flower["rounds"], strict=True)):
        for key, value in ours.items():
            assert np.allclose(value, theirs[key], rtol=1e-12, atol=1e-15), (flower["flwr"], r, key)


# Runs in Flower's interpreter: the defaults of its strategies' constructors, under shardq's names.
FLOWER_DEFAULTS = """
import inspect, json, sys
from flwr.serverapp.strategy import FedAdam, FedAvgM, FedYogi
names = {"server_learning_rate": "server_lr", "server_momentum": "momentum", "eta": "server_lr",
         "beta_1": "beta1", "beta_2": "beta2", "tau": "tau"}
out = {}
for key, cls in (("fedavgm", FedAvgM), ("fedadam", FedAdam), ("fedyogi", FedYogi)):
    params = inspect.signature(cls.__init__).parameters
    out[key] = {names[p]: params[p].default for p in params if p in names}
json.dump(out, sys.stdout)
"""


def test_strategy_defaults_are_flowers() -> None:
    # Flower 1.42's flwr.serverapp.strategy defaults (the legacy flwr.server.strategy.FedAdam's tau
    # is 1e-9; the serverapp one's 1e-3). eta_l, the clients' rate, is the training function's.
    assert {k: STRATEGIES[k] for k in ("fedavgm", "fedadam", "fedyogi")} == {
        "fedavgm": {"server_lr": 1.0, "momentum": 0.0},
        "fedadam": {"server_lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
        "fedyogi": {"server_lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
    }
    if not FLOWER_PYTHON.exists():
        pytest.skip(f"Flower is not installed at {FLOWER_PYTHON}: `make flower` builds it (.venv/flower)")
    run = subprocess.run(
        [str(FLOWER_PYTHON), "-c", FLOWER_DEFAULTS], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout) == {k: STRATEGIES[k] for k in ("fedavgm", "fedadam", "fedyogi")}


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi"])
def test_server_steps_equal_flowers_formulas_written_out(name: str) -> None:
    # Flower's aggregate_train, line by line (flwr/serverapp/strategy/fedavgm.py, fedopt.py,
    # fedadam.py, fedyogi.py); the same random rounds the test above hands to Flower itself.
    x0, averages = random_rounds()
    p = FLOWER_PARAMS[name]
    x, m, v, expected = x0, {k: 0.0 * a for k, a in x0.items()}, {k: 0.0 * a for k, a in x0.items()}, []
    momentum: Arrays | None = None
    for server_round, average in enumerate(averages, start=1):
        if name == "fedavgm":
            pseudo = {k: x[k] - average[k] for k in x}
            momentum = pseudo if momentum is None else {k: p["momentum"] * momentum[k] + pseudo[k] for k in x}
            x = {k: x[k] - p["server_lr"] * momentum[k] for k in x}
        else:
            delta = {k: average[k] - x[k] for k in x}
            m = {k: p["beta1"] * m[k] + (1 - p["beta1"]) * delta[k] for k in x}
            if name == "fedadam":
                v = {k: p["beta2"] * v[k] + (1 - p["beta2"]) * delta[k] ** 2 for k in x}
                t = server_round + 1.0
                eta = p["server_lr"] * np.sqrt(1 - p["beta2"] ** t) / (1 - p["beta1"] ** t)
            else:
                v = {k: v[k] - (1 - p["beta2"]) * delta[k] ** 2 * np.sign(v[k] - delta[k] ** 2) for k in x}
                eta = p["server_lr"]
            x = {k: x[k] + eta * m[k] / (np.sqrt(v[k]) + p["tau"]) for k in x}
        expected.append(x)
    for r, (ours, want) in enumerate(zip(shardq_rounds(name, x0, averages), expected, strict=True)):
        for key in want:
            assert np.allclose(ours[key], want[key], rtol=1e-12, atol=1e-15), (r, key)


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


def test_the_evaluate_hook_scores_the_stepped_model_and_dtypes_survive_the_step(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a module with an evaluate hook whose shards save float32 w and an integer step counter
    buf = io.BytesIO()
    np.savez(buf, w=np.array([1.0, 0.5, 0.0], dtype=np.float32), steps=np.array(0))
    start(
        engine,
        settings,
        clients,
        {"name": "fedavgm", "server_lr": 0.5, "momentum": 0.5},
        rounds=1,
        entrypoint="tests.worker.evaluated:train",
        init=buf.getvalue(),
    )
    # WHEN the round is reduced
    (r0,) = run_rounds(engine, settings, clients, 1)
    # THEN evaluate_global scored the model after the server step (x1 = x0 − 0.5 (x0 − x̄), x̄ = 0.5), not
    # the plain average; w stayed float32 and the step counter came through unaveraged
    assert r0.metrics == {"w0": 0.75, "steps": 10.0, "w_is_float32": 1.0, "on_cpu": 1.0}
    model = npz(clients["s3"], r0.model_uri or "")
    assert model["w"].dtype == np.float32 and model["w"].tolist() == [0.75, 0.5, 0.25]
    assert sorted(state_of(clients, r0)) == ["momentum/w"]  # only floating entries have a state


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
