"""One construct per capability; each exposes the parts other components wire to."""

from stacks.components.fleet import FleetSizing, WorkerFleet
from stacks.components.functions import FunctionSizing, ShardqFunctions
from stacks.components.job_store import JobStore
from stacks.components.lambda_asset import stage_lambda_source
from stacks.components.monitoring import Monitoring
from stacks.components.results_queue import ResultsQueue
from stacks.components.task_queues import TaskQueues
from stacks.components.worker_access import WorkerAccess

__all__ = [
    "FleetSizing",
    "FunctionSizing",
    "JobStore",
    "Monitoring",
    "ResultsQueue",
    "ShardqFunctions",
    "TaskQueues",
    "WorkerAccess",
    "WorkerFleet",
    "stage_lambda_source",
]
