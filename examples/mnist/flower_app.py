"""The same FedAvg workload in Flower: a ``ClientApp`` and a ``ServerApp`` run by Flower's simulation engine.

Run in the Flower virtualenv (``make flower``; ``benchmarks/flower_compare.py`` does it)::

    PYTHONPATH=. .venv/flower/bin/python -m examples.mnist.flower_app \\
        --data mnist.npz --init init.pt --out flower-iid --partition iid --rounds 20

Client ``k`` (Flower's ``partition-id``) trains on exactly the samples of shardq's shard ``k``,
with the same ``examples.mnist.models.local_train`` and the same batch-order generator; the
server is Flower's own ``FedAvg`` strategy (weighted by ``num-examples``). After each round the
global model is saved as ``round-XXXX.pt`` (0-based, as shardq numbers rounds) and scored on the
held-out test set; ``history.json`` holds the per-round accuracy and wall times.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from examples.mnist import models
from examples.mnist.data import client_indices

client_app = ClientApp()
_DATA: dict[str, dict[str, np.ndarray]] = {}


def _arrays(path: str) -> dict[str, np.ndarray]:
    if path not in _DATA:
        with np.load(path) as data:
            _DATA[path] = {k: data[k] for k in data.files}
    return _DATA[path]


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """One client's local SGD from the global model: the computation of shardq's ``fedavg.train``."""
    cfg = msg.content["config"]
    client, clients = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    data = _arrays(str(cfg["data"]))
    idx = client_indices(data["y_train"], str(cfg["partition"]), clients, client, int(cfg["seed"]))
    model = models.build(str(cfg["arch"]), int(cfg["seed"]))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    began = time.perf_counter()
    loss = models.local_train(
        model,
        data["x_train"][idx],
        data["y_train"][idx],
        epochs=int(cfg["epochs"]),
        batch_size=int(cfg["batch_size"]),
        lr=float(cfg["lr"]),
        # Flower counts rounds from 1, shardq from 0: the same round draws the same batch order.
        generator=models.batch_generator(int(cfg["seed"]), int(cfg["server-round"]) - 1, client),
    )
    # float64 on the wire (lossless widening of the float32 weights) makes Flower's FedAvg sum in
    # float64 like shardq's reduce, so both round one nearly exact average once to float32.
    wire = torch.float64 if cfg["wire_dtype"] == "float64" else torch.float32
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: v.to(wire) for k, v in model.state_dict().items()}),
            "metrics": MetricRecord(
                {"train_loss": loss, "train_s": time.perf_counter() - began, "num-examples": len(idx)}
            ),
        }
    )
    return Message(content=content, reply_to=msg)


def server_app(args: argparse.Namespace) -> ServerApp:
    """A ``ServerApp`` running Flower's ``FedAvg`` over every client, saving and scoring each round."""
    app = ServerApp()
    out = Path(args.out)
    history: list[dict[str, float]] = []
    marks = {"last": 0.0}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        began = time.perf_counter()
        model = models.build(args.arch, args.seed)
        model.load_state_dict(arrays.to_torch_state_dict())
        data = _arrays(args.data)
        accuracy, loss = models.evaluate(model, data["x_test"], data["y_test"])
        if server_round > 0:
            # The model the clients train next: the average rounded to the model's float32.
            torch.save(model.state_dict(), out / f"round-{server_round - 1:04d}.pt")
            history.append(
                {"round": server_round - 1, "test_accuracy": accuracy, "test_loss": loss,
                 "round_s": began - marks["last"]}
            )  # fmt: skip
            (out / "history.json").write_text(json.dumps(history, indent=1))
        marks["last"] = time.perf_counter()
        return MetricRecord({"test_accuracy": accuracy, "test_loss": loss})

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=args.clients,
            min_available_nodes=args.clients,
        )
        config = ConfigRecord(
            {
                "data": args.data, "partition": args.partition, "arch": args.arch, "seed": args.seed,
                "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                "wire_dtype": args.wire_dtype,
            }
        )  # fmt: skip
        initial = ArrayRecord(models.load_state(Path(args.init)))
        result = strategy.start(
            grid=grid,
            initial_arrays=initial,
            train_config=config,
            num_rounds=args.rounds,
            evaluate_fn=evaluate,
        )
        # The clients' mean local-SGD seconds per round (FedAvg's num-examples-weighted mean).
        for row in history:
            row["mean_train_s"] = float(result.train_metrics_clientapp[row["round"] + 1]["train_s"])
        (out / "history.json").write_text(json.dumps(history, indent=1))

    return app


def main(argv: list[str] | None = None) -> int:
    """Run the simulation; the rounds' global models and ``history.json`` land in ``--out``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="the dataset .npz (examples.mnist.data.write_dataset)")
    parser.add_argument("--init", required=True, help="initial state_dict (.pt) shared with shardq")
    parser.add_argument("--out", required=True)
    parser.add_argument("--arch", default="cnn", choices=models.ARCHS)
    parser.add_argument("--partition", default="iid")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--wire-dtype", default="float64", choices=("float64", "float32"),
        help="dtype of the client updates FedAvg sums (float32: Flower's usual order-dependent float32 sums)",
    )  # fmt: skip
    parser.add_argument("--cpus", type=int, default=2, help="Ray CPUs (one client per CPU at a time)")
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    backend: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": args.cpus, "log_to_driver": False},
    }
    started = time.perf_counter()
    run_simulation(
        server_app=server_app(args),
        client_app=client_app,
        num_supernodes=args.clients,
        backend_config=backend,
    )
    history = json.loads((Path(args.out) / "history.json").read_text())
    summary = {"rounds": len(history), "total_s": time.perf_counter() - started}
    (Path(args.out) / "run.json").write_text(json.dumps(summary))
    return 0 if len(history) == args.rounds else 1


if __name__ == "__main__":
    raise SystemExit(main())
