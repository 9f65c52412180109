"""Create shardq's queues, table and bucket directly (no CloudFormation), from the stack's own template.

Most tests want a fresh, isolated set of stateful resources per test, in milliseconds, which a
CloudFormation deploy cannot give. So this module provisions them with plain API calls, but it
does not restate them: it reads their properties (queue attributes and redrive policies, the
table's key schema, GSI and TTL) from the CloudFormation template the CDK app synthesizes, so the
stack is the one definition and a change there reaches every test.

The template is synthesized once per change of the app (``stacks/**``, ``app.py``, ``cdk.json``)
and cached under ``.shardq/template-cache/`` keyed by a hash of those files: a test session pays a
synth (seconds) only after the stack changed, and at most once. The synth runs the app in a
subprocess exactly as the CDK CLI would (``CDK_CONTEXT_JSON`` from cdk.json, ``CDK_OUTDIR``), so the
local cloud imports no stack code.

What is not copied: names (each set gets a fresh prefix), encryption keys, tags, bucket policies,
versioning and lifecycle rules — deploy-time concerns that the e2e tests cover on the deployed
stack (tests/e2e).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shardq.core.settings import Settings
from shardq.local import once

ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = ROOT / ".shardq" / "template-cache"
# What the template depends on (the Lambda code only changes asset hashes, which nothing here reads).
TEMPLATE_SOURCES = ("app.py", "cdk.json", "stacks")
# Logical ids of the stateful resources: pinned by the stack (PINNED_LOGICAL_IDS), stable by test.
TASK_QUEUE, TASK_DLQ, RESULTS_QUEUE, RESULTS_DLQ = "TaskQueue", "TaskDlq", "ResultsQueue", "ResultsDlq"
PARKED_RESULTS = "ParkedResults"
JOB_TABLE, ARTIFACT_BUCKET = "JobTable", "ArtifactBucket"
# CloudFormation AWS::SQS::Queue properties that are queue attributes of the same name.
_QUEUE_ATTRIBUTES = (
    "FifoQueue",
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
    "VisibilityTimeout",
    "MessageRetentionPeriod",
    "DelaySeconds",
    "MaximumMessageSize",
    "ReceiveMessageWaitTimeSeconds",
)
SYNTH_TIMEOUT_S = 300


class TemplateError(RuntimeError):
    """The stack's template could not be synthesized (and no earlier one is cached)."""


def _sources_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for name in TEMPLATE_SOURCES:
        path = root / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.is_file() else []
        for file in files:
            if "__pycache__" in file.parts:
                continue
            digest.update(str(file.relative_to(root)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _synthesize(root: Path) -> dict[str, Any]:
    context = json.loads((root / "cdk.json").read_text(encoding="utf-8"))["context"]
    with tempfile.TemporaryDirectory(prefix="shardq-synth-") as outdir:
        env = {
            **os.environ,
            "CDK_CONTEXT_JSON": json.dumps(context),
            "CDK_OUTDIR": outdir,
            "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        }
        proc = subprocess.run(
            [sys.executable, "app.py"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=SYNTH_TIMEOUT_S,
            check=False,
        )
        templates = sorted(Path(outdir).glob("*.template.json"))
        if proc.returncode != 0 or len(templates) != 1:
            raise TemplateError(
                f"synth of {root / 'app.py'} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
            )
        template: dict[str, Any] = json.loads(templates[0].read_text(encoding="utf-8"))
        return template


@functools.cache
def stack_template(root: Path = ROOT) -> dict[str, Any]:
    """The synthesized CloudFormation template of the app in ``root`` (cached per source change).

    Raises
    ------
    TemplateError
        When the app does not synthesize and no template of an earlier version is cached; with an
        earlier one cached, that one is used (a stack mid-edit must not stop every test).
    """
    cache = CACHE_DIR if root == ROOT else root / ".shardq" / "template-cache"
    path = cache / f"template-{_sources_digest(root)}.json"
    if path.is_file():
        cached: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return cached
    # One synth per content however many processes ask at once (shardq.local.once): the rest wait.
    with once.building(path):
        if path.is_file():
            kept: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return kept
        try:
            template = _synthesize(root)
        except (TemplateError, subprocess.TimeoutExpired) as err:
            earlier = sorted(cache.glob("template-*.json"), key=lambda p: p.stat().st_mtime)
            if not earlier:
                raise TemplateError(str(err)) from err
            warnings.warn(f"{err}\nusing the last synthesized template instead", stacklevel=2)
            fallback: dict[str, Any] = json.loads(earlier[-1].read_text(encoding="utf-8"))
            return fallback
        staged = path.with_suffix(f".{os.getpid()}.tmp")
        staged.write_text(json.dumps(template), encoding="utf-8")
        os.replace(staged, path)  # atomic: concurrent sessions never read half a file
        return template


def _properties(template: Mapping[str, Any], logical_id: str) -> dict[str, Any]:
    try:
        props: dict[str, Any] = template["Resources"][logical_id]["Properties"]
    except KeyError as err:
        raise TemplateError(f"the stack's template has no {logical_id} (its logical id is pinned)") from err
    return props


def _cfn_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def queue_attributes(
    template: Mapping[str, Any], logical_id: str, dlq_arns: Mapping[str, str]
) -> dict[str, str]:
    """CreateQueue attributes of a queue in ``template``; its DLQ (a ``Fn::GetAtt``) resolved by
    ``dlq_arns`` (logical id → ARN of the queue created for it)."""
    props = _properties(template, logical_id)
    attributes = {name: _cfn_value(props[name]) for name in _QUEUE_ATTRIBUTES if name in props}
    redrive = props.get("RedrivePolicy")
    if redrive:
        target = redrive["deadLetterTargetArn"]["Fn::GetAtt"][0]
        attributes["RedrivePolicy"] = json.dumps(
            {"deadLetterTargetArn": dlq_arns[target], "maxReceiveCount": int(redrive["maxReceiveCount"])}
        )
    return attributes


def table_definition(template: Mapping[str, Any], logical_id: str = JOB_TABLE) -> dict[str, Any]:
    """CreateTable arguments (keys, attribute definitions, GSIs, billing) of the job table."""
    props = _properties(template, logical_id)
    definition: dict[str, Any] = {
        "KeySchema": props["KeySchema"],
        "AttributeDefinitions": props["AttributeDefinitions"],
        "BillingMode": props.get("BillingMode", "PROVISIONED"),
    }
    indexes = [
        {
            k: v
            for k, v in gsi.items()
            if k in ("IndexName", "KeySchema", "Projection", "ProvisionedThroughput")
        }
        for gsi in props.get("GlobalSecondaryIndexes", [])
    ]
    if indexes:
        definition["GlobalSecondaryIndexes"] = indexes
    return definition


def _redrive_targets(template: Mapping[str, Any]) -> set[str]:
    """Logical ids of the queues another queue's redrive policy names (its DLQs)."""
    targets: set[str] = set()
    for resource in template.get("Resources", {}).values():
        redrive = (resource.get("Properties") or {}).get("RedrivePolicy")
        if resource.get("Type") == "AWS::SQS::Queue" and redrive:
            targets.add(redrive["deadLetterTargetArn"]["Fn::GetAtt"][0])
    return targets


def _create_queue(sqs: Any, name: str, attributes: Mapping[str, str], *, arn: bool) -> tuple[str, str | None]:
    """The new queue's URL, and its ARN when ``arn`` (one more call: only a DLQ's is needed, for the
    redrive policies; every test provisions, so the calls add up)."""
    url = sqs.create_queue(QueueName=name, Attributes=dict(attributes))["QueueUrl"]
    if not arn:
        return url, None
    return url, sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def _queue_overrides(
    attributes: dict[str, str], *, visibility_s: int | None, max_receive_count: int | None
) -> dict[str, str]:
    if visibility_s is not None:
        attributes["VisibilityTimeout"] = str(visibility_s)
    if max_receive_count is not None and "RedrivePolicy" in attributes:
        policy = json.loads(attributes["RedrivePolicy"])
        attributes["RedrivePolicy"] = json.dumps({**policy, "maxReceiveCount": max_receive_count})
    return attributes


def provision(
    sqs: Any,
    ddb: Any,
    s3: Any,
    *,
    prefix: str | None = None,
    max_receive_count: int | None = None,
    task_visibility_s: int | None = None,
    results_visibility_s: int | None = None,
    template: Mapping[str, Any] | None = None,
) -> Settings:
    """Create one isolated set of the stack's stateful resources; returns the settings that point at them.

    Parameters
    ----------
    sqs, ddb, s3
        boto3 clients of the target endpoint (the local cloud).
    prefix
        Name prefix of this set; a fresh random one by default.
    max_receive_count, task_visibility_s, results_visibility_s
        Deliberate deviations from the stack for a test (``None``: the stack's value).
    template
        The template to copy; the cached synth of this repository's app by default.
    """
    t = template if template is not None else stack_template()
    p = prefix or f"sq{uuid.uuid4().hex[:10]}"
    arns: dict[str, str] = {}
    dlqs = _redrive_targets(t)
    urls: dict[str, str] = {}
    names = {
        TASK_DLQ: f"{p}-tasks-dlq.fifo",
        TASK_QUEUE: f"{p}-tasks.fifo",
        RESULTS_DLQ: f"{p}-results-dlq",
        RESULTS_QUEUE: f"{p}-results",
    }
    if PARKED_RESULTS in t.get("Resources", {}):  # a template from before the parked queue lacks it
        names[PARKED_RESULTS] = f"{p}-results-parked"
    visibility = {TASK_QUEUE: task_visibility_s, RESULTS_QUEUE: results_visibility_s}
    for logical_id, name in names.items():  # DLQs first: their ARNs go into the redrive policies
        attributes = _queue_overrides(
            queue_attributes(t, logical_id, arns),
            visibility_s=visibility.get(logical_id),
            max_receive_count=max_receive_count,
        )
        urls[logical_id], queue_arn = _create_queue(sqs, name, attributes, arn=logical_id in dlqs)
        if queue_arn is not None:
            arns[logical_id] = queue_arn
    table = f"{p}-jobs"
    ddb.create_table(TableName=table, **table_definition(t))
    ttl = _properties(t, JOB_TABLE).get("TimeToLiveSpecification")
    if ttl and ttl.get("Enabled"):
        ddb.update_time_to_live(
            TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]}
        )
    _properties(t, ARTIFACT_BUCKET)  # the stack has one; its policies are deploy-time concerns
    bucket = f"{p}-artifacts"
    s3.create_bucket(Bucket=bucket)
    redrive = json.loads(queue_attributes(t, TASK_QUEUE, arns)["RedrivePolicy"])
    return Settings(
        job_table=table,
        task_queue_url=urls[TASK_QUEUE],
        results_queue_url=urls[RESULTS_QUEUE],
        artifact_bucket=bucket,
        max_receive_count=max_receive_count if max_receive_count is not None else redrive["maxReceiveCount"],
        parked_results_queue_url=urls.get(PARKED_RESULTS),
    )


def dlq_urls(sqs: Any, settings: Settings) -> dict[str, str]:
    """The DLQ URLs of a provisioned set (named after its queues)."""
    return {
        "tasks": settings.task_queue_url.replace("-tasks.fifo", "-tasks-dlq.fifo"),
        "results": settings.results_queue_url + "-dlq",
    }
