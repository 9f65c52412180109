"""The main job, end to end on the embedded local cloud: ``make run``.

1. starts ministack on 127.0.0.1 (no AWS account, no Docker) and deploys the real CDK
   stack into it with the pinned CDK CLI (``cdk bootstrap`` + ``cdk deploy``);
2. uploads a regression dataset (20,000 samples × 8 features) to the stack's bucket;
3. submits examples/requests/data_parallel.json (16 shards × 5 FedAvg rounds) by invoking
   the deployed splitter Lambda, as ``aws lambda invoke`` does;
4. starts four ``shardq worker`` processes that train on their shards (numpy SGD), upload
   models to S3 and post results; the aggregator Lambda, behind its SQS event source
   mapping, counts them, enqueues the reduce and the next round, and finishes the job;
5. checks the outcome: job SUCCEEDED, validation loss falling every round, and the final
   model within 1 % of the centralized least-squares solution.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from shardq.core.jobstore import JobRecord, JobStore
from shardq.core.planning import split_s3
from shardq.dashboard.launch import try_start, wait_until_interrupted
from shardq.local.cloud import LocalCloud
from shardq.local.deploy import deploy_stack
from shardq.local.workers import start_workers, stop_workers

ROOT = Path(__file__).resolve().parents[1]
DATASET_KEY = "datasets/linear-20000x8.npz"


def main(argv: list[str] | None = None) -> int:
    """Run the demo job; exit code 0 when the job succeeded and the model checks out."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--request", type=Path, default=ROOT / "examples" / "requests" / "data_parallel.json")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--dashboard-port", type=int, default=0, help="dashboard port (default: a free one)")
    parser.add_argument(
        "--keep-open", action="store_true", help="keep the dashboard up after the job, until Ctrl-C"
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from examples.linear import least_squares, write_dataset

    started = time.monotonic()
    with LocalCloud() as cloud:
        print(f"local cloud up at {cloud.endpoint_url}; deploying the stack with the CDK CLI ...", flush=True)
        outputs = deploy_stack(cloud)
        print(f"stack 'shardq' deployed in {outputs.pop('_deploy_seconds')} s", flush=True)
        s3, lam, ddb = cloud.client("s3"), cloud.client("lambda"), cloud.client("dynamodb")
        bucket = outputs["ArtifactBucketName"]

        request = json.loads(args.request.read_text())
        n = int(request["dataset"]["num_samples"])
        with tempfile.TemporaryDirectory() as tmp:
            data = write_dataset(Path(tmp) / "linear.npz", n)
            s3.upload_file(str(data), bucket, DATASET_KEY)
            w_ls, b_ls = least_squares(str(data), n)
        request["dataset"]["uri"] = f"s3://{bucket}/{DATASET_KEY}"
        print(f"dataset: {n} samples uploaded to {request['dataset']['uri']}", flush=True)

        response = lam.invoke(
            FunctionName=outputs["SplitterFunctionName"], Payload=json.dumps(request).encode()
        )
        answer = json.loads(response["Payload"].read())
        if not answer.get("ok"):
            print(f"splitter rejected the request:\n{answer.get('message', answer)}", file=sys.stderr)
            return 1
        job_id = answer["job_id"]
        print(f"submitted {job_id}: {answer['shards']} shards x {answer['rounds']} rounds", flush=True)

        assert cloud.state_dir is not None
        workers = start_workers(
            cloud.env(), args.workers, log_dir=cloud.state_dir, name="demo",
            extra_args=["--concurrency", "1", "--wait-seconds", "2"],
        )  # fmt: skip
        print(f"{args.workers} workers polling the task queue", flush=True)
        board, line = try_start(
            outputs, cloud.client, port=args.dashboard_port, source=cloud.endpoint_url, job_id=job_id
        )
        print(line, flush=True)
        try:
            job = _watch(JobStore(outputs["JobTableName"], ddb), job_id, args.timeout)
        finally:
            stop_workers(workers)
        code = _report(s3, job, np.append(w_ls, b_ls), time.monotonic() - started)
        if board is not None and args.keep_open:
            wait_until_interrupted(board)
        elif board is not None:
            board.stop()
        return code


def _watch(store: JobStore, job_id: str, timeout: float) -> JobRecord:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        r, phase = job.round, job.phase
        line = f"  round {r + 1}/{job.rounds} {phase:<6} {job.ok(r, phase)}/{job.expected(r, phase)}"
        if line != last:
            print(line, flush=True)
            last = line
        if job.terminal:
            return job
        time.sleep(0.25)
    raise TimeoutError(f"job {job_id} did not finish within {timeout:.0f} s")


def _report(s3: Any, job: JobRecord, exact: np.ndarray, elapsed: float) -> int:
    print(f"job {job.job_id}: {job.status} after {elapsed:.1f} s (start-up and deploy included)")
    if job.status != "SUCCEEDED" or job.result_uri is None:
        print(f"error: {job.error}", file=sys.stderr)
        return 1
    b, key = split_s3(job.result_uri)
    manifest = json.loads(s3.get_object(Bucket=b, Key=key)["Body"].read())
    val = [r["metrics"]["val_loss"]["mean"] for r in manifest["rounds"]]
    for r, v in zip(manifest["rounds"], val, strict=True):
        shards, samples = r["shards_succeeded"], r["num_samples"]
        print(f"  round {r['round'] + 1}: {shards} shards, {samples} samples, val_loss {v:.5f}")
    mb, mkey = split_s3(manifest["final_model_uri"])
    with np.load(io.BytesIO(s3.get_object(Bucket=mb, Key=mkey)["Body"].read())) as model:
        learned = np.append(model["w"], float(model["b"]))
    relative = float(np.linalg.norm(learned - exact) / np.linalg.norm(exact))
    print(f"  final model {manifest['final_model_uri']}")
    print(f"  distance to the least-squares solution: {relative:.2e} (relative)")
    print(f"  result manifest {job.result_uri}")
    # Loss must fall until it reaches the noise floor, then stay there (1 % slack for SGD noise).
    ok = relative < 0.01 and val[-1] < val[0] and all(b <= a * 1.01 for a, b in itertools.pairwise(val))
    print(
        "verified: loss fell to its floor; the model matches least squares to 1 %" if ok else "NOT verified"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
