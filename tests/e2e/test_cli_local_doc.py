"""docs/CLI.md's local-cloud steps run as written, in a fresh shell with no AWS configuration.

The fenced ``sh`` blocks of the section "On the local cloud" are executed by bash, one after
another, against a real ``shardq local up --detach``: the first starts the local cloud, sets the
environment, reaches it with ``shardq`` and the AWS CLI and leaves a worker in the background; the
last stops it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from shardq.local.run import process_is
from tests.e2e.conftest import ROOT

VENV_BIN = Path(sys.executable).parent


def local_section_blocks() -> list[str]:
    """The ``sh`` blocks between '### On the local cloud' and the next heading of that level."""
    guide = (ROOT / "docs" / "CLI.md").read_text()
    section = guide.split("### On the local cloud", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def clean_env(tmp_path: Path) -> dict[str, str]:
    """A new user's shell: no AWS or shardq variables, no AWS config files, the venv on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SHARDQ_"))}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONPATH=str(ROOT),
    )
    if "AWS_CA_BUNDLE" in os.environ:
        env["AWS_CA_BUNDLE"] = os.environ["AWS_CA_BUNDLE"]
    return env


def bash(script: str, cwd: Path, env: dict[str, str], timeout: float) -> tuple[subprocess.Popen[bytes], Path]:
    """Run ``script`` with ``set -euo pipefail`` in its own process group, its output in a file.

    Returns when bash exits, not when its output ends: a command the script leaves running in the
    background (the guide's ``shardq worker … &``) holds the output open until it exits, which with
    the guide's ``--idle-exit 120`` is two minutes later. The caller ends the group.
    """
    out = cwd / f"bash-{len(list(cwd.glob('bash-*.out')))}.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            ["bash", "-c", "set -euo pipefail\n" + script],
            cwd=cwd,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        end_group(proc)
        raise
    return proc, out


def end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM what is left of ``proc``'s process group (`local up --detach` made its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)


def wait_for_text(path: Path, text: str, timeout: float) -> str:
    """``path``'s contents once they contain ``text`` (a background process writes it)."""
    deadline = time.monotonic() + timeout
    while text not in (content := path.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert text in content, f"no {text!r} in {path} after {timeout} s:\n{content}"
    return content


def test_the_local_cloud_steps_in_the_cli_guide_run_as_written(tmp_path: Path) -> None:
    # GIVEN the guide's local-cloud steps and a shell with no AWS configuration at all
    blocks = local_section_blocks()
    assert len(blocks) == 2, blocks
    start, stop = blocks
    assert "shardq local up" in start and "shardq local down" in stop
    env = clean_env(tmp_path)
    run_file = tmp_path / ".shardq" / "local.json"
    first: subprocess.Popen[bytes] | None = None
    try:
        # WHEN the first block runs
        first, first_out = bash(start, tmp_path, env, timeout=900)
        # THEN every step succeeded: outputs came from the local CloudFormation
        output = first_out.read_text()
        assert first.returncode == 0, output
        assert "TaskQueueUrl" in output and "running" in output
        info = json.loads(run_file.read_text())
        assert process_is(info["pid"], "ministack")
        env_file = (tmp_path / ".shardq" / "local.env").read_text()
        for name in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "SHARDQ_STACK"):
            assert f"export {name}=" in env_file
        # and the worker it left in the background serves the stack's task queue
        queue_url = re.search(r"TaskQueueUrl\s+(\S+)", output)
        assert queue_url, output
        started = wait_for_text(first_out, '"worker started"', timeout=120)
        assert f'"task_queue_url": "{queue_url[1]}"' in started, started
        # WHEN the last block runs
        last, last_out = bash(stop, tmp_path, env, timeout=120)
        # THEN the local cloud is gone, and so is the run file
        assert last.returncode == 0, last_out.read_text()
        assert not process_is(info["pid"], "ministack")
        assert not process_is(info["up_pid"], "shardq")
        assert not run_file.exists()
    finally:
        if first is not None:
            end_group(first)  # the guide's background worker
        subprocess.run(
            [sys.executable, "-m", "shardq.cli", "local", "down", "--run-file", str(run_file)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
