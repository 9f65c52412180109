"""A request's ``after``: the job it follows in a pipeline, and what it takes from it.

Standard library and the validation helpers only: the request parser imports it (and so every
Lambda). What acts on it — the waiting job, its start once the upstream job SUCCEEDED, its end
when the upstream one did not — is ``shardq.core.pipeline``.

``after: {"job_id": "<upstream>", "use": "best" | "final_model"}``

* ``best`` — the upstream sweep's best trial's hyperparameters, laid over this request's own
  ``hyperparameters`` (a key the best trial set wins);
* ``final_model`` — the upstream job's final model (a data_parallel job's last global model, a
  sweep's best trial's model) as this job's initial model (``model.init_uri``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shardq.core.validation import JOB_ID_RE, _Checker

USES = ("best", "final_model")
# What each use needs of the upstream job's kind.
USE_KINDS = {"best": ("sweep",), "final_model": ("data_parallel", "sweep")}


def wrong_kind_fix(use: str, kind: str) -> str:
    """The fix for ``after.use`` naming an upstream job of a ``kind`` that use does not take:
    the other use when that one takes it, else which kinds each use accepts."""
    others = [u for u, kinds in USE_KINDS.items() if u != use and kind in kinds]
    if others:
        return f"use {others[0]} instead (use {use} takes only a {' or '.join(USE_KINDS[use])} job)"
    accepted = "; ".join(f"use {u} takes a {' or '.join(kinds)} job" for u, kinds in USE_KINDS.items())
    return f"a {kind} job offers neither; follow a job of a kind that offers one ({accepted})"


@dataclass(frozen=True)
class After:
    """The job this one follows (``job_id``) and what it takes from it (``use``)."""

    job_id: str
    use: str

    def to_dict(self) -> dict[str, str]:
        return {"job_id": self.job_id, "use": self.use}


def after_field(c: _Checker, data: dict[str, Any], job_id: str | None) -> After | None:
    """``after``: the upstream job and what to take from it, or None (problems go on ``c``)."""
    value = data.get("after")
    if value is None:
        return None
    example = '{"job_id": "<the job to follow>", "use": "best"}'
    if not isinstance(value, dict):
        c.add(f"after must be an object like {example}; got {value!r:.60}")
        return None
    unknown = sorted(set(value) - {"job_id", "use"})
    if unknown:
        c.add(f"after has unknown field(s) {', '.join(unknown)}; it takes job_id and use, e.g. {example}")
    upstream, use = value.get("job_id"), value.get("use")
    ok = True
    if not isinstance(upstream, str) or not JOB_ID_RE.fullmatch(upstream):
        c.add(
            "after.job_id must be the id of the job to follow (as `shardq list` shows it); "
            f"got {upstream!r:.60}"
        )
        ok = False
    elif upstream == job_id:
        c.add(f"after.job_id names this job itself ('{upstream}'); a job cannot follow itself")
        ok = False
    if use not in USES:
        c.add(f"after.use must be one of {', '.join(USES)}; got {use!r:.60}")
        ok = False
    return After(job_id=str(upstream), use=str(use)) if ok else None


def request_schema() -> dict[str, Any]:
    """``after``'s part of the request's JSON Schema (``shardq.core.schema``)."""
    return {
        "after": {
            "type": "object",
            "description": "The job this one follows: it waits (WAITING) until that job SUCCEEDED, then "
            "starts with its best trial's hyperparameters (use: best) or its final model (use: final_model).",
            "additionalProperties": False,
            "required": ["job_id", "use"],
            "properties": {
                "job_id": {"type": "string", "pattern": JOB_ID_RE.pattern},
                "use": {"enum": list(USES)},
            },
        }
    }
