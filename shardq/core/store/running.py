"""The running jobs, for admission (quotas at submit, windows and shares while jobs run).

Reads the ``by_status`` index (``status = RUNNING``, newest first, every attribute projected),
page by page, up to a limit: the scheduler needs every running job's tenant, priority, lanes,
start time and counters, and a platform runs tens to hundreds of jobs at once, not millions.
"""

from __future__ import annotations

from shardq.core.store.base import StoreBase
from shardq.core.store.records import JobRecord

# The most running jobs admission looks at; beyond it, the oldest are not seen (documented in
# docs/OPERATIONS.md: quotas and shares count the newest ``MAX_RUNNING_LISTED`` running jobs).
MAX_RUNNING_LISTED = 1000


def running_jobs(store: StoreBase, limit: int = MAX_RUNNING_LISTED) -> list[JobRecord]:
    """Every RUNNING job (up to ``limit``, newest first), read from the ``by_status`` index."""
    kwargs = {
        "TableName": store.table,
        "IndexName": "by_status",
        "KeyConditionExpression": "#s = :s",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {":s": {"S": "RUNNING"}},
        "ScanIndexForward": False,
    }
    out: list[JobRecord] = []
    while len(out) < limit:
        resp = store.ddb.query(**kwargs, Limit=min(100, limit - len(out)))
        out.extend(JobRecord.from_item(item) for item in resp.get("Items", []))
        after = resp.get("LastEvaluatedKey")
        if after is None:
            break
        kwargs["ExclusiveStartKey"] = after
    return out
