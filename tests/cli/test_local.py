"""``shardq local status|env|down`` and the region/credential errors that point at the local cloud."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardq.cli import main
from shardq.local.cloud import LocalCloud


@pytest.fixture
def no_aws_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new user's environment: no AWS variables, no config files, no instance metadata."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "SHARDQ_")) and name != "AWS_CA_BUNDLE":
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_no_region_against_the_local_cloud_names_the_variable_boto3_reads(
    cloud: LocalCloud,
    no_aws_config: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN the local cloud's endpoint and AWS_REGION, which botocore 1.43 does not read
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    # WHEN a command calls it
    code = main(["--endpoint-url", cloud.endpoint_url, "outputs"])
    # THEN exit 4, naming AWS_DEFAULT_REGION with the local cloud's value
    err = capsys.readouterr().err
    assert code == 4
    assert "AWS_REGION=us-east-1 is set, but boto3 reads AWS_DEFAULT_REGION" in err
    assert "export AWS_DEFAULT_REGION=us-east-1" in err and cloud.endpoint_url in err


def test_no_credentials_against_the_local_cloud_names_its_dummy_ones(
    cloud: LocalCloud, no_aws_config: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN the local cloud's endpoint and region, no credentials
    code = main(["--endpoint-url", cloud.endpoint_url, "--region", "us-east-1", "outputs"])
    # THEN exit 4 with the exports that work
    err = capsys.readouterr().err
    assert code == 4
    assert "export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test" in err
    assert "shardq local env" in err


def test_no_region_on_aws_names_aws_default_region(
    no_aws_config: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN no endpoint and no region WHEN a command runs THEN it names the variable to set
    assert main(["outputs"]) == 4
    err = capsys.readouterr().err
    assert "set AWS_DEFAULT_REGION" in err and "local cloud" not in err


def test_status_and_env_without_a_local_cloud_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_file = str(tmp_path / "local.json")
    assert main(["local", "status", "--run-file", run_file]) == 3
    assert "start one with `shardq local up --detach`" in capsys.readouterr().out
    assert main(["local", "env", "--run-file", run_file]) == 3
    # and down is a no-op that succeeds
    assert main(["local", "down", "--run-file", run_file]) == 0


def test_down_with_a_stale_run_file_stops_no_process_that_reused_its_pids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a run file whose PIDs now belong to other programs (a sleep started here)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_file = tmp_path / "local.json"
        run_file.write_text(
            json.dumps({"endpoint_url": "http://127.0.0.1:9", "pid": other.pid, "up_pid": other.pid})
        )
        # WHEN status and down read it
        assert main(["local", "status", "--run-file", str(run_file)]) == 3
        assert "stale" in capsys.readouterr().out
        assert main(["local", "down", "--run-file", str(run_file), "--timeout", "1"]) == 0
        # THEN the other program still runs, and the stale run file is gone
        assert other.poll() is None
        assert not run_file.exists()
        assert "nothing was running" in capsys.readouterr().err
    finally:
        other.kill()
        other.wait()


def test_down_removes_the_env_files_written_for_its_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    # GIVEN stand-ins for a detached `shardq local up` and its cloud (own sessions: down ends the
    # cloud's process group), recorded in a run file as `up` records them
    def stand_in(marker: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)", marker], start_new_session=True
        )
        request.addfinalizer(lambda: (proc.kill(), proc.wait()))
        return proc

    up, cloud = stand_in("shardq-local-up"), stand_in("ministack-stand-in")
    run_file = tmp_path / ".shardq" / "local.json"
    run_file.parent.mkdir()
    endpoint = "http://127.0.0.1:9"
    info = {"endpoint_url": endpoint, "pid": cloud.pid, "up_pid": up.pid, "run_file": str(run_file)}
    run_file.write_text(json.dumps(info))
    # AND two env files written for it; the second rewritten since for another endpoint
    ours, rewritten = tmp_path / ".shardq" / "local.env", tmp_path / "other.env"
    for env_file in (ours, rewritten):
        assert main(["local", "env", "--run-file", str(run_file), "--env-file", str(env_file)]) == 0
        assert f"export AWS_ENDPOINT_URL={endpoint}\n" in env_file.read_text()
    rewritten.write_text("export AWS_ENDPOINT_URL=http://127.0.0.1:4566\n")
    capsys.readouterr()
    # WHEN the run is stopped
    assert main(["local", "down", "--run-file", str(run_file), "--timeout", "5"]) == 0
    # THEN its processes, its run file and the env file still pointing at it are gone; the other stays
    assert up.wait(timeout=10) is not None and cloud.wait(timeout=10) is not None
    assert not run_file.exists() and not ours.exists()
    assert rewritten.read_text() == "export AWS_ENDPOINT_URL=http://127.0.0.1:4566\n"
    assert f"env file {ours}" in capsys.readouterr().err
    # AND status says, plainly, that nothing runs
    assert main(["local", "status", "--run-file", str(run_file)]) == 3
    assert capsys.readouterr().out.startswith("not running (no local cloud recorded in ")


def test_status_and_env_of_a_running_local_cloud(
    cloud: LocalCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    # GIVEN a run file for this test's live local cloud and a stand-in for its `shardq local up`
    assert cloud.process is not None
    up = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "shardq-local-up"])
    request.addfinalizer(lambda: (up.kill(), up.wait()))
    run_file = tmp_path / "local.json"
    info = {
        "endpoint_url": cloud.endpoint_url,
        "region": "us-east-1",
        "stack_name": "mystack",
        "pid": cloud.process.pid,
        "up_pid": up.pid,
        "outputs": {},
    }
    run_file.write_text(json.dumps(info))
    # WHEN status runs THEN it serves (exit 0)
    assert main(["local", "status", "--run-file", str(run_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "running"
    # WHEN env runs THEN it prints the export lines and writes them, owner-only
    env_file = tmp_path / "local.env"
    assert main(["local", "env", "--run-file", str(run_file), "--env-file", str(env_file)]) == 0
    out = capsys.readouterr().out
    assert f"export AWS_ENDPOINT_URL={cloud.endpoint_url}\n" in out
    assert "export AWS_DEFAULT_REGION=us-east-1\n" in out and "export SHARDQ_STACK=mystack\n" in out
    assert out in env_file.read_text()
    assert env_file.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("pid", [0, -1, "0", None, True, "not-a-pid"])
def test_a_run_file_pid_that_names_no_single_process_is_never_signalled(
    pid: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a hand-edited or corrupt run file whose PIDs are 0 or -1 (to kill(2), "my process
    # group" and "every process I may signal"), on a machine where the command line cannot be
    # checked (macOS has no /proc: liveness is all process_is can check there)
    from shardq.local import run

    monkeypatch.setattr(run, "_cmdline", lambda p: "shardq local up ministack")
    sent: list[tuple[str, int, int]] = []
    monkeypatch.setattr(run.os, "kill", lambda p, s: sent.append(("kill", p, s)))
    monkeypatch.setattr(run.os, "killpg", lambda p, s: sent.append(("killpg", p, s)))
    run_file = tmp_path / "local.json"
    run_file.write_text(json.dumps({"endpoint_url": "http://127.0.0.1:9", "pid": pid, "up_pid": pid}))
    # WHEN down reads it THEN no signal at all is sent (not even the liveness probe), nothing is
    # reported stopped, and the stale run file is gone
    assert run.process_is(pid, "shardq") is False
    assert run.stop(run_file, json.loads(run_file.read_text()), timeout=0.1) == []
    assert sent == [] and not run_file.exists()
