"""Where a running ``shardq local up`` is recorded, so ``local status``/``env``/``down`` find it.

``local up`` writes a run file (JSON: its own PID, the local cloud's PID and endpoint, the stack,
its outputs, the state dir) and removes it when it stops. The default run file is
``.shardq/local.json`` in the current directory (``SHARDQ_LOCAL_RUN_FILE`` or ``--run-file``
elsewhere), so the shell that started the local cloud finds it again without arguments.

``down`` ends only what ``up`` started, by the PIDs in the run file, and only after checking that
each PID is still that process (its command line names ``shardq`` / ``ministack``): a stale run
file whose PIDs were reused by other programs stops nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

from shardq.local.cloud import CREDENTIALS, REGION

RUN_FILE_ENV = "SHARDQ_LOCAL_RUN_FILE"
DEFAULT_RUN_FILE = Path(".shardq") / "local.json"


def run_file_path(explicit: str | None = None) -> Path:
    """The run file: ``explicit``, else ``SHARDQ_LOCAL_RUN_FILE``, else ``.shardq/local.json``."""
    return Path(explicit or os.environ.get(RUN_FILE_ENV) or DEFAULT_RUN_FILE).resolve()


def read_run_file(path: Path) -> dict[str, Any] | None:
    """The recorded run, or None when there is no (readable) run file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_run_file(path: Path, info: dict[str, Any]) -> None:
    """Write the run file atomically (a reader never sees half of it), readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    os.replace(tmp, path)


def remove_run_file(path: Path, owner_pid: int) -> None:
    """Remove the run file, and the env files written for its run, if it still records ``owner_pid``
    (a newer ``up`` may have replaced it)."""
    info = read_run_file(path)
    if info is not None and info.get("up_pid") == owner_pid:
        remove_env_files(info)
        path.unlink(missing_ok=True)


def record_env_file(info: dict[str, Any], env_file: Path) -> None:
    """Note in ``info`` (and in its run file, when that records the same run) an env file written
    for this run, so that ``down`` removes it with the run file: left behind, it would point every
    shell that loads it at a stopped endpoint."""
    files = {str(f) for f in info.get("env_files") or []} | {str(env_file.resolve())}
    info["env_files"] = sorted(files)
    run_file = Path(str(info.get("run_file") or ""))
    recorded = read_run_file(run_file) if info.get("run_file") else None
    if recorded is not None and recorded.get("up_pid") == info.get("up_pid"):
        files |= set(recorded.get("env_files") or [])
        write_run_file(run_file, {**recorded, "env_files": sorted(files)})


def remove_env_files(info: dict[str, Any]) -> list[Path]:
    """Remove the env files written for this run; returns those removed.

    Only a file that still exports this run's endpoint is removed: one rewritten since for another
    local cloud (or by hand) is left alone."""
    removed = []
    endpoint = str(info.get("endpoint_url") or "")
    for name in info.get("env_files") or []:
        path = Path(name)
        try:
            ours = bool(endpoint) and f"AWS_ENDPOINT_URL={shlex.quote(endpoint)}\n" in path.read_text(
                encoding="utf-8"
            )
        except OSError:
            continue
        if ours:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _cmdline(pid: int) -> str:
    """The process's command line, '' when it does not exist (or /proc is not there)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pid(value: Any) -> int | None:
    """``value`` as the PID of one process, or None.

    0 and negative numbers are not one process to ``kill(2)``: 0 is the caller's own process
    group, -1 every process it may signal. A run file (hand-edited, corrupt) holding one must
    stop nothing, above all where /proc is missing and a command line cannot be checked.
    """
    if isinstance(value, bool):
        return None
    try:
        pid = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return pid if pid > 0 else None


def process_is(pid: Any, marker: str) -> bool:
    """True when ``pid`` is alive and its command line contains ``marker``.

    Without /proc (macOS) only liveness is checked.
    """
    pid = _pid(pid)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except (OSError, OverflowError):
        return False
    if not Path("/proc/self/cmdline").exists():
        return True
    return marker in _cmdline(pid)


def healthy(endpoint_url: str) -> bool:
    """True when the local cloud at ``endpoint_url`` answers its health check."""
    try:
        with urllib.request.urlopen(f"{endpoint_url}/_ministack/health", timeout=2) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except (OSError, ValueError):
        return False


def state(info: dict[str, Any] | None) -> str:
    """``running`` (both processes alive, health answers), ``unhealthy``, ``orphaned`` or ``stopped``."""
    if info is None:
        return "stopped"
    up_alive = process_is(info.get("up_pid"), "shardq")
    cloud_alive = process_is(info.get("pid"), "ministack")
    if not cloud_alive:
        return "stopped"
    if not healthy(str(info.get("endpoint_url", ""))):
        return "unhealthy"
    return "running" if up_alive else "orphaned"


def environment(info: dict[str, Any]) -> dict[str, str]:
    """What boto3, the AWS CLI, the CDK CLI and ``shardq`` need to reach this local cloud.

    botocore 1.43 reads the region from ``AWS_DEFAULT_REGION`` only; ``AWS_REGION`` is set too for
    the CDK CLI and other SDKs. The credentials are the local cloud's dummy ones.
    """
    region = str(info.get("region") or REGION)
    return {
        "AWS_ENDPOINT_URL": str(info["endpoint_url"]),
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        **CREDENTIALS,
        "SHARDQ_STACK": str(info.get("stack_name") or "shardq"),
    }


def export_lines(env: dict[str, str]) -> str:
    """``export NAME=value`` lines for a POSIX shell (``eval "$(...)"`` or ``. FILE``)."""
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def write_env_file(path: Path, env: dict[str, str]) -> None:
    """The export lines in ``path`` (created owner-only: it holds credentials, dummy as they are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("# shardq local cloud: `. FILE` in a POSIX shell\n" + export_lines(env))


def _end(value: Any, marker: str, timeout: float, group: bool) -> bool:
    """SIGTERM ``pid`` (its process group when ``group``), then SIGKILL after ``timeout``."""
    pid = _pid(value)
    if pid is None or not process_is(pid, marker):
        return False
    kill = os.killpg if group else os.kill
    with contextlib.suppress(ProcessLookupError, PermissionError):
        kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_is(pid, marker):
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        kill(pid, signal.SIGKILL)
    return True


def stop(path: Path, info: dict[str, Any], timeout: float = 30.0) -> list[str]:
    """Stop the recorded ``local up`` (it stops its local cloud) and, if orphaned, the cloud itself.

    Returns what was stopped and removed, for the message. The run file is removed in every
    case, and with it the env files written for this run (``record_env_file``).
    """
    stopped = []
    if _end(info.get("up_pid"), "shardq", timeout, group=False):
        stopped.append(f"shardq local up (pid {info['up_pid']})")
        # ``up`` stops the cloud on SIGTERM; give it the time to do so before looking again.
        deadline = time.monotonic() + timeout
        while process_is(info.get("pid"), "ministack") and time.monotonic() < deadline:
            time.sleep(0.2)
    # The cloud runs in its own process group (start_new_session), which ``up`` created.
    if _end(info.get("pid"), "ministack", timeout, group=True):
        stopped.append(f"local cloud (pid {info['pid']})")
    # The run file as it is now: ``local env --env-file`` may have recorded env files since.
    for env_file in remove_env_files({**info, **(read_run_file(path) or {})}):
        stopped.append(f"env file {env_file}")
    path.unlink(missing_ok=True)
    return stopped
