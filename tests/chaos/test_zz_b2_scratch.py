"""SCRATCH (helper B2)."""
from __future__ import annotations
import random
from typing import Any
import pytest
from tests.chaos.test_model import ShardqModel, handlers  # noqa: F401

pytestmark = pytest.mark.local_cloud


@pytest.mark.parametrize("seed", list(range(6, 18)))
def test_drive(clients: dict[str, Any], handlers: None, seed: int) -> None:
    ShardqModel.clients = clients
    m = ShardqModel()
    rng = random.Random(seed)
    jobs = [m.submit_fedbuff(rng.randint(2, 4), rng.randint(0, 1), rng.randint(0, 3)) for _ in range(2)]
    jobs.append(m.submit("data_parallel", 3, "", 0, 1))
    m.promises()
    log = []
    for step in range(40):
        choice = rng.choice(["take", "report", "report", "pump", "pump", "diverge", "crash", "poison", "replay",
                             "fail_then_die", "cancel", "retry", "retry_failed"])
        log.append(choice)
        try:
            if choice == "take":
                m.take(rng.randint(1, 10))
            elif choice == "report" and m.world.held:
                m.report(rng.randint(0, 99), rng.randint(1, 4), rng.choice(["ok", "ok", "failed", "duplicate"]), rng.random() < 0.5)
            elif choice == "pump":
                m.pump()
            elif choice == "diverge" and m.world.held:
                m.diverge(rng.randint(0, 99), float("nan"))
            elif choice == "crash" and m.world.held:
                m.crash(rng.randint(0, 99))
            elif choice == "poison" and m.world.held:
                m.poison(rng.randint(0, 99))
            elif choice == "replay" and m.world.posted:
                m.replay(rng.randint(0, 999))
            elif choice == "fail_then_die" and m.world.held:
                m.fail_then_die(rng.randint(0, 99))
            elif choice == "cancel" and rng.random() < 0.2:
                m.cancel(rng.choice(jobs))
            elif choice == "retry":
                m.retry(rng.choice(jobs))
            elif choice == "retry_failed" and "FAILED" in m.statuses.values():
                m.retry_a_failed_job(rng.randint(0, 99))
            m.promises()
        except BaseException as exc:
            raise AssertionError(f"step {step} {log}: {exc}") from exc
    try:
        m.teardown()
    except BaseException as exc:
        raise AssertionError(f"teardown {log}: {exc}") from exc
    print(dict(ShardqModel.seen))
