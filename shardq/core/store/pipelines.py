"""The job table's pipeline items: who follows a job, and the waiting job's two exits.

A job submitted with ``after`` is created WAITING (``shardq.core.pipeline``). Its upstream job's
partition holds one link item per follower (``sk = FOLLOWER#<job id>``), written before the
upstream job's status is read at submit, so whoever finishes the upstream job afterwards finds
the link (a consistent query). A waiting job leaves WAITING once, by one of two conditional
writes: ``start`` (to RUNNING, with its resolved request) or ``end`` (to FAILED or CANCELLED,
with the ``Job Finished`` event marked pending, as ``JobStore.finish`` does for a running job).
"""

from __future__ import annotations

from shardq.core.store.base import StoreBase
from shardq.core.store.keys import _from_item, _pk, _to_item
from shardq.core.store.update import _Update

WAITING = "WAITING"
FOLLOWER_PREFIX = "FOLLOWER#"


class PipelineLinks(StoreBase):
    """Follower links and the WAITING → RUNNING | FAILED | CANCELLED transitions."""

    def link(self, upstream: str, follower: str) -> None:
        """Record that ``follower`` waits for ``upstream`` (idempotent)."""
        item = {"pk": _pk(upstream), "sk": {"S": f"{FOLLOWER_PREFIX}{follower}"}}
        self.ddb.put_item(TableName=self.table, Item={**item, **_to_item({"follower": follower})})

    def followers(self, upstream: str) -> list[str]:
        """The jobs that wait (or waited) for ``upstream``, in id order (a consistent read)."""
        return [str(_from_item(i)["follower"]) for i in self._query(upstream, FOLLOWER_PREFIX)]

    def start(self, job_id: str, *, request_json: str, model_uri: str | None) -> bool:
        """WAITING → RUNNING with the request resolved from the upstream job; False if it had left
        WAITING already (started, ended or cancelled by another caller)."""
        update = _Update().set(
            status="RUNNING",
            request=request_json,
            model_uri=model_uri,
            round_started_at=self.stamp(),
        )
        return self._update(job_id, update.expect(status=WAITING))

    def end(
        self,
        job_id: str,
        status: str,
        *,
        finished_at: str,
        result_uri: str,
        error: str | None,
        expires_at: int,
    ) -> bool:
        """WAITING → ``status`` (FAILED or CANCELLED) with the event pending; False if it had left
        WAITING already."""
        update = _Update().set(
            status=status,
            finished_at=finished_at,
            result_uri=result_uri,
            error=error,
            event_pending=True,
            expires_at=expires_at,
        )
        return self._update(job_id, update.expect(status=WAITING))
