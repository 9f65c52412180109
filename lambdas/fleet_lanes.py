"""Fleet lanes Lambda (deployed only with a worker fleet): publish the RunnableLanes gauge.

Invoked every minute by an EventBridge schedule. It reads the RUNNING jobs from the job table's
``by_status`` index and publishes ``shardq/Fleet RunnableLanes`` (dimension ``JobTable``): the
task lanes those jobs can keep busy now (``runnable_lanes`` in shardq/core/scaling.py). The fleet
caps its workers at this gauge, so it never starts GPUs for tasks queued behind a busy lane. Kept
free of Powertools so it starts fast; a failed run only leaves one datapoint missing (the rule then
caps at ``fleet_max_workers``, as without the gauge).
"""

from __future__ import annotations

import os
from typing import Any

from shardq.core.clients import client
from shardq.core.jobstore import JobStore
from shardq.core.scaling import lanes_metric, runnable_lanes

RUNNING = "RUNNING"
# One query page of the status index; far above the jobs one fleet serves at once.
MAX_RUNNING_JOBS = 1000


def publish_lanes(table: str, ddb: Any, cloudwatch: Any) -> int:
    """Compute the gauge from the table and publish it; returns the value published.

    Parameters
    ----------
    table
        The job table (``SHARDQ_JOB_TABLE``).
    ddb, cloudwatch
        boto3 clients.
    """
    jobs = JobStore(table, ddb).list_jobs(RUNNING, limit=MAX_RUNNING_JOBS)
    lanes = runnable_lanes((job, job.request.max_parallel) for job in jobs)
    namespace, name, dimension = lanes_metric()
    cloudwatch.put_metric_data(
        Namespace=namespace,
        MetricData=[
            {
                "MetricName": name,
                "Dimensions": [{"Name": dimension, "Value": table}],
                "Value": float(lanes),
                "Unit": "Count",
            }
        ],
    )
    return lanes


def handler(event: dict[str, Any], context: Any) -> dict[str, int]:
    """Scheduled entry point: ``{"lanes": <value published>}``."""
    return {"lanes": publish_lanes(os.environ["SHARDQ_JOB_TABLE"], client("dynamodb"), client("cloudwatch"))}
