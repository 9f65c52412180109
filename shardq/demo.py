"""The main job, end to end on the embedded local cloud: ``make run``.

1. starts ministack on 127.0.0.1 (no AWS account, no Docker);
2. creates the queues, table and bucket and runs the three Lambda handlers inside it
   behind real event source mappings;
3. submits examples/requests/data_parallel.json through the splitter Lambda
   (a Lambda Invoke call, as ``aws lambda invoke`` makes);
4. runs four workers that train a linear model with SGD on their shards (numpy),
   upload models to S3 and post results; the aggregator Lambda counts them, enqueues
   the FedAvg reduce and the next round;
5. checks the outcome: job SUCCEEDED, validation loss falling round over round, and the
   final model close to the weights the data was generated from.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from shardq.core.contracts import TERMINAL_STATUSES
from shardq.local.cloud import LocalCloud
from shardq.local.functions import deploy_functions
from shardq.local.resources import provision
from shardq.worker.runtime import Worker, split_s3

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Run the demo job; exit code 0 when the job succeeded and the model checks out."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--request", type=Path, default=ROOT / "examples" / "requests" / "data_parallel.json")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # workers import examples.* entrypoints

    started = time.monotonic()
    with LocalCloud() as cloud:
        print(f"local cloud up at {cloud.endpoint_url} ({time.monotonic() - started:.1f} s)")
        sqs, ddb, s3, lam = (cloud.client(s) for s in ("sqs", "dynamodb", "s3", "lambda"))
        settings = provision(sqs, ddb, s3, prefix="shardq-demo")
        functions = deploy_functions(lam, sqs, settings)
        print(f"queues, table, bucket and Lambdas {sorted(functions.values())} deployed")

        request = json.loads(args.request.read_text())
        response = lam.invoke(FunctionName=functions["splitter"], Payload=json.dumps(request).encode())
        answer = json.loads(response["Payload"].read())
        if not answer.get("ok"):
            print(f"splitter rejected the request:\n{answer.get('message', answer)}", file=sys.stderr)
            return 1
        job_id = answer["job_id"]
        print(f"submitted {job_id}: {answer['shards']} shards x {answer['rounds']} rounds")

        stop = threading.Event()
        workers = [
            Worker(
                sqs=cloud.client("sqs"),
                s3=cloud.client("s3"),
                task_queue_url=settings.task_queue_url,
                results_queue_url=settings.results_queue_url,
                worker_id=f"demo-worker-{i}",
                wait_s=1,
            )
            for i in range(args.workers)
        ]
        threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in workers]
        for t in threads:
            t.start()
        job = _watch(ddb, settings.job_table, job_id, args.timeout)
        stop.set()
        for t in threads:
            t.join(timeout=5)
        return _report(s3, settings.artifact_bucket, job, request, workers, time.monotonic() - started)


def _watch(ddb: object, table: str, job_id: str, timeout: float) -> dict[str, str]:
    from shardq.core.jobstore import JobStore

    store = JobStore(table, ddb)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        r, phase = int(job["round"]), job["phase"]
        done = int(job.get(f"ok_r{r}_{phase}", 0))
        expected = job["task_count"] if phase == "train" else 1
        line = f"  round {r + 1}/{job['rounds']} {phase:<6} {done}/{expected}"
        if line != last:
            print(line, flush=True)
            last = line
        if job["status"] in TERMINAL_STATUSES:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not finish within {timeout:.0f} s")


def _report(
    s3: object, bucket: str, job: dict[str, str], request: dict, workers: list[Worker], elapsed: float
) -> int:
    from examples.linear import true_weights

    print(f"job {job['job_id']}: {job['status']} in {elapsed:.1f} s")
    if job["status"] != "SUCCEEDED":
        print(f"error: {job.get('error')}", file=sys.stderr)
        return 1
    b, key = split_s3(job["result_uri"])
    manifest = json.loads(s3.get_object(Bucket=b, Key=key)["Body"].read())  # type: ignore[attr-defined]
    val = [r["metrics"]["val_loss"]["mean"] for r in manifest["rounds"]]
    for r, v in zip(manifest["rounds"], val, strict=True):
        shards, samples = r["shards_succeeded"], r["num_samples"]
        print(f"  round {r['round'] + 1}: {shards} shards, {samples} samples, val_loss {v:.5f}")
    mb, mkey = split_s3(manifest["final_model_uri"])
    with np.load(io.BytesIO(s3.get_object(Bucket=mb, Key=mkey)["Body"].read())) as model:  # type: ignore[attr-defined]
        w, bias = model["w"], float(model["b"])
    w_true, b_true = true_weights(request["dataset"].get("uri"))
    err = float(np.max(np.abs(np.append(w - w_true, bias - b_true))))
    print(f"  final model {manifest['final_model_uri']}")
    print(f"  max |w - w_true| = {err:.4f}; tasks per worker: {[w.tasks_done for w in workers]}")
    print(f"  result manifest {job['result_uri']}")
    ok = err < 0.05 and val[-1] < val[0]
    print("verified: validation loss fell and the model recovers the true weights" if ok else "NOT verified")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
