"""Flower's synchronous FedAvg with one slow client, for ``benchmarks.async_fl`` (run in ``.venv/flower``).

    PYTHONPATH=. .venv/flower/bin/python -m benchmarks.async_flower --paces 0.9,1.1,1.3,10.5 \\
        --data mnist.npz --init init.pt --out flower-iid --partition iid --clients 4 --rounds 8

``examples.mnist.flower_app``'s client and server (Flower's own ``FedAvg``, the same local SGD,
data split and batch order as shardq's clients), with one change: client ``k``'s update is paced
to ``paces[k] × epochs`` seconds (its local SGD, then a sleep for the rest), as
``benchmarks.async_workload.fl_train`` paces shardq's. Each client is a Ray actor with one logical
CPU and the simulation gets one per client, so all clients train at once, as shardq's one worker
per client does.

``OUT/history.json`` (from ``flower_app``'s server) holds each round's test accuracy and wall time
(``round_s``: from the end of the previous round's evaluation, round 1 from the initial model's,
so round 1 includes Ray's start-up of the client actors); ``OUT/clients.jsonl`` each client
update's start and end (``time.time()``), from which ``benchmarks.async_fl`` starts Flower's clock
when the first client starts training, as shardq's starts with its workers already polling.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.simulation import run_simulation

from examples.mnist import flower_app

client_app = ClientApp()
PACES_ENV, OUT_ENV = "SHARDQ_BENCH_PACES", "SHARDQ_BENCH_OUT"


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """``flower_app``'s client update, paced to this client's ``SHARDQ_BENCH_PACES`` × epochs
    seconds; its start, end and real seconds go to ``clients.jsonl`` in the output folder
    (``SHARDQ_BENCH_OUT``)."""
    began, ticked = time.time(), time.monotonic()
    reply = flower_app.train(msg, context)
    client = int(context.node_config["partition-id"])
    paces = [float(d) for d in os.environ[PACES_ENV].split(",")]
    pace = paces[client] * int(msg.content["config"]["epochs"])
    real = time.monotonic() - ticked
    time.sleep(max(0.0, pace - real))
    row = {
        "client": client,
        "round": int(msg.content["config"]["server-round"]),
        "start": began,
        "end": time.time(),
        "real_s": round(real, 3),
        "pace_s": round(pace, 3),
    }
    with (Path(os.environ[OUT_ENV]) / "clients.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    return reply


def main(argv: list[str] | None = None) -> int:
    """Run the simulation; ``history.json`` and ``run.json`` land in ``--out``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name in ("--data", "--init", "--out", "--partition", "--paces"):
        parser.add_argument(name, required=True)
    parser.add_argument("--arch", default="cnn")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    # The Ray actors that run the clients read the paces from their environment, inherited from
    # this process (flower_app's server fixes the clients' config; Flower sets Ray's runtime_env).
    os.environ[PACES_ENV], os.environ[OUT_ENV] = args.paces, str(Path(args.out).resolve())
    server_args = SimpleNamespace(**vars(args), wire_dtype="float64")
    backend: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": args.clients, "log_to_driver": False},
    }
    started = time.time()
    run_simulation(
        server_app=flower_app.server_app(server_args),
        client_app=client_app,
        num_supernodes=args.clients,
        backend_config=backend,
    )
    history = json.loads((Path(args.out) / "history.json").read_text())
    summary = {"rounds": len(history), "total_s": time.time() - started}
    (Path(args.out) / "run.json").write_text(json.dumps(summary))
    return 0 if len(history) == args.rounds else 1


if __name__ == "__main__":
    raise SystemExit(main())
