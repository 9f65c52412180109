"""Start, probe and stop ministack, the local cloud, on 127.0.0.1.

ministack serves SQS, DynamoDB, S3, Lambda, CloudFormation and EventBridge on one
port. It listens on all interfaces unless told otherwise, so ``BIND_HOST`` is
always set; ``IOT_MTLS_ENABLED=0`` keeps it from opening a second listener.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

HOST = "127.0.0.1"
REGION = "us-east-1"
# ministack accepts any credentials; these keep boto3 from looking for real ones.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class LocalCloud:
    """A ministack server owned by this process.

    Use as a context manager, or ``start()``/``stop()``. ``stop`` ends exactly the
    process it started (by PID, with its process group) and removes its temp state.
    """

    port: int = 0
    state_dir: Path | None = None
    log_level: str = "WARNING"
    # Long polls and event sources answer as soon as AWS's would (shardq.local.ministack_fixes);
    # False runs ministack as released (benchmarks.round_floor measures both).
    fixes: bool = True
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _owned_state: bool = field(default=False, init=False)

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{HOST}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for clients (boto3, AWS CLI, cdk) that should reach this cloud."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            **CREDENTIALS,
        }

    def start(self, timeout: float = 60.0) -> LocalCloud:
        """Start ministack and wait until it answers its health check."""
        if self.process is not None:
            return self
        self.port = self.port or free_port()
        if self.state_dir is None:
            self.state_dir = Path(tempfile.mkdtemp(prefix="shardq-local-"))
            self._owned_state = True
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "BIND_HOST": HOST,
            "MINISTACK_HOST": HOST,
            "GATEWAY_PORT": str(self.port),
            "IOT_MTLS_ENABLED": "0",
            "SFTP_ENABLED": "0",
            "LOG_LEVEL": self.log_level,
            "MINISTACK_REGION": REGION,
            "S3_DATA_DIR": str(self.state_dir / "s3"),
            "TMPDIR": str(self.state_dir),
        }
        log = (self.state_dir / "ministack.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shardq.local.ministack_fixes" if self.fixes else "ministack"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.state_dir / "ministack.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"ministack exited with code {self.process.returncode}:\n{tail}")
            if self.healthy():
                return self
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"ministack did not answer on {self.endpoint_url} within {timeout:.0f} s")

    def healthy(self) -> bool:
        """True when the health endpoint answers."""
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/_ministack/health", timeout=1) as resp:  # noqa: S310
                return bool(resp.status == 200)
        except OSError:
            return False

    def reset(self) -> None:
        """Drop every resource (queues, tables, buckets, functions)."""
        req = urllib.request.Request(f"{self.endpoint_url}/_ministack/reset", method="POST")  # noqa: S310
        with urllib.request.urlopen(req, timeout=10):  # noqa: S310
            pass

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM to its process group, then SIGKILL) and clean temp state."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        if self._owned_state and self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self._owned_state = False

    def client(self, service: str) -> Any:
        """A boto3 client bound to this cloud (shardq's one client factory, with its retry mode)."""
        from shardq.core.clients import new_client

        return new_client(service, region=REGION, endpoint_url=self.endpoint_url, credentials=CREDENTIALS)

    def __enter__(self) -> LocalCloud:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
