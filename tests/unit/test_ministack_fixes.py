"""The local cloud's two waits (shardq.local.ministack_fixes) are applied to the pinned ministack.

What they change is timing (measured in benchmarks.round_floor, never asserted here); what is tested
is that they land where ministack 1.5.33 keeps those waits, and that a long poll still answers.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

from shardq.local import ministack_fixes
from shardq.local.cloud import LocalCloud


def test_the_fixes_patch_the_modules_ministack_waits_in() -> None:
    code = (
        "import asyncio\n"
        "from shardq.local import ministack_fixes as f\n"
        "from ministack.services import lambda_svc, sqs\n"
        "assert sqs.asyncio is asyncio and lambda_svc._ESM_IDLE_WAKE_GAP_SECONDS == 0.05\n"
        "f.patch()\n"
        "assert lambda_svc._ESM_IDLE_WAKE_GAP_SECONDS == f.ESM_IDLE_GAP_S\n"
        "assert sqs._dispatch.__name__ == 'dispatch_and_wake'\n"
        "assert sqs.asyncio.iscoroutine is asyncio.iscoroutine\n"
        "print('patched')\n"
    )
    # a fresh interpreter: patching ministack in this one would change the suite's other clouds
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "patched", out.stderr


def test_a_waiting_receive_sleeps_until_woken_or_its_recheck_interval() -> None:
    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await ministack_fixes._WakeableSleep.sleep(0.05)  # nothing wakes it: its own interval
        timed_out = loop.time() - t0
        sleeper = asyncio.ensure_future(ministack_fixes._WakeableSleep.sleep(30.0))
        await asyncio.sleep(0.05)
        t1 = loop.time()
        ministack_fixes._wake_waiters()  # what a SendMessage does
        await sleeper
        return timed_out, loop.time() - t1

    timed_out, woken_after = asyncio.run(scenario())
    assert timed_out >= 0.04
    assert woken_after < 5.0  # woken: the 30 s sleep did not run out
    assert not ministack_fixes._waiters


def test_the_local_cloud_runs_the_fixed_ministack_and_a_long_poll_still_answers() -> None:
    with LocalCloud() as cloud:
        assert cloud.process is not None and "shardq.local.ministack_fixes" in cloud.process.args
        sqs = cloud.client("sqs")
        url = sqs.create_queue(QueueName="fixes-probe")["QueueUrl"]
        assert sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages") is None  # waits, empty
        sqs.send_message(QueueUrl=url, MessageBody="x")
        (msg,) = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5)["Messages"]
        assert msg["Body"] == "x"
