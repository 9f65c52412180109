"""How the read views show a job's tenant, priority and window (issue #25; shardq.core.admission).

One definition for ``status``, ``list`` and ``watch`` (the dashboard serves the same ``JobView``
fields as JSON): ``vision · priority 900 · 6 in the queue of a window of 8``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shardq.core.tenancy import DEFAULT_PRIORITY


def priority_text(data: Mapping[str, Any]) -> str:
    """``priority 900``, or ``priority 500 (default)``."""
    priority = data.get("priority")
    return f"priority {DEFAULT_PRIORITY} (default)" if priority is None else f"priority {priority}"


def window_text(data: Mapping[str, Any]) -> str | None:
    """``6 in the queue of a window of 8`` (tasks sent but not counted, of the window), or None
    for a job sent whole."""
    if data.get("window") is None:
        return None
    return f"{data.get('queued') or 0} queued or running of a window of {data['window']}"


def scheduling_text(data: Mapping[str, Any]) -> str:
    """The ``tenant`` line of ``status``: tenant, priority and window."""
    parts = [data.get("tenant") or "default", priority_text(data), window_text(data)]
    return " · ".join(p for p in parts if p)


def snapshot_fields(view: Mapping[str, Any]) -> dict[str, Any]:
    """The ``watch`` snapshot's scheduling fields, from a ``JobView`` dict."""
    return {k: view.get(k) for k in ("tenant", "priority", "queued", "window")}


def watch_suffix(snapshot: Mapping[str, Any]) -> str:
    """What ``watch``'s progress line adds: `` · window 6/8`` while the job is windowed."""
    if snapshot.get("window") is None or snapshot.get("status") != "RUNNING":
        return ""
    return f" · window {snapshot.get('queued') or 0}/{snapshot['window']}"
