"""Start the dashboard beside another command (``make run``): in a thread, only if installed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def try_start(
    outputs: dict[str, str],
    client: Callable[[str], Any],
    *,
    port: int = 0,
    source: str = "",
    job_id: str = "",
) -> tuple[Any, str]:
    """Serve the dashboard on 127.0.0.1 from a daemon thread, if its packages are installed.

    Returns ``(running, line)``: the running server (None when not installed) and the line to
    print, which gives the address of ``job_id``'s page or says how to install the dashboard.
    """
    try:
        from shardq.dashboard.data import DashboardData
        from shardq.dashboard.server import start_in_background
    except ImportError as exc:
        return (
            None,
            f"dashboard: not installed ({exc.name}); run `make dashboard` once to watch jobs in a browser",
        )
    running = start_in_background(DashboardData.from_outputs(outputs, client), port=port, source=source)
    page = f"{running.url}#/job/{job_id}" if job_id else running.url
    return running, f"dashboard: {page} (read-only, live while the job runs)"


def wait_until_interrupted(running: Any) -> None:
    """Keep serving until Ctrl-C, then stop the server."""
    print(f"dashboard stays up at {running.url}; Ctrl-C ends it", flush=True)
    try:
        while running.thread.is_alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()
