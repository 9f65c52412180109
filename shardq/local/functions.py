"""Run shardq's Lambda handlers inside the local cloud, behind real event source mappings.

Interim deployment for the local cloud: the same asset (handlers + ``shardq.core``),
handler names, environment and event source settings as the CDK stack, created with
Lambda API calls. The local-cloud issue replaces it with ``cdk deploy`` of the real stack.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

from shardq.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
ROLE = "arn:aws:iam::000000000000:role/shardq-local"


def asset_files(root: Path = ROOT) -> list[Path]:
    """What the Lambda asset holds: the handlers and the core they import, nothing else."""
    files = [
        *sorted((root / "lambdas").rglob("*.py")),
        root / "shardq" / "__init__.py",
        *sorted((root / "shardq" / "core").rglob("*.py")),
    ]
    return [f for f in files if "__pycache__" not in f.parts]


def asset_zip(root: Path = ROOT) -> bytes:
    """The asset as a deterministic zip."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for path in asset_files(root):
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            z.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def deploy_functions(lam: Any, sqs: Any, settings: Settings, *, prefix: str = "shardq") -> dict[str, str]:
    """Create the splitter, aggregator and DLQ handler and wire their event sources."""
    code = asset_zip()
    env = {**settings.as_env(), "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_SERVICE_NAME": "shardq"}
    names = {}
    for role, handler, timeout in (
        ("splitter", "lambdas.splitter.handler", 900),
        ("aggregator", "lambdas.aggregator.handler", 120),
        ("dlq-handler", "lambdas.dlq_handler.handler", 60),
    ):
        name = f"{prefix}-{role}"
        lam.create_function(
            FunctionName=name,
            Runtime="python3.13",
            Role=ROLE,
            Handler=handler,
            Code={"ZipFile": code},
            Timeout=timeout,
            MemorySize=512,
            Environment={"Variables": env},
        )
        names[role] = name

    def arn(url: str) -> str:
        return str(
            sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        )

    lam.create_event_source_mapping(
        EventSourceArn=arn(settings.results_queue_url),
        FunctionName=names["aggregator"],
        BatchSize=100,
        MaximumBatchingWindowInSeconds=1,
        FunctionResponseTypes=["ReportBatchItemFailures"],
        ScalingConfig={"MaximumConcurrency": 2},
    )
    dlq = settings.task_queue_url.replace("-tasks.fifo", "-tasks-dlq.fifo")
    lam.create_event_source_mapping(
        EventSourceArn=arn(dlq),
        FunctionName=names["dlq-handler"],
        BatchSize=10,
        FunctionResponseTypes=["ReportBatchItemFailures"],
    )
    return names
