"""Run every benchmark with its defaults, one after the other (``make bench``).

    .venv/bin/python -m benchmarks.run_all [--quick]

``--quick`` shrinks them (5 import runs, 500 tasks × 1 repeat, 2,000/4,000 modelled
messages, 200 results, 50 end-to-end shards, a 20 s idle window) for a smoke test; the
figures in BENCHMARKS.md come from the defaults.
"""

from __future__ import annotations

import argparse
import time

from benchmarks import aggregation, e2e, fanout, idle, import_time, quota


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run, not for the figures")
    args = parser.parse_args(argv)
    suites = (
        ("import_time", import_time.main, ["--runs", "5"] if args.quick else []),
        ("fanout", fanout.main, ["--tasks", "500", "--repeats", "1"] if args.quick else []),
        (
            "quota",
            quota.main,
            ["--tasks", "2000", "--ht-tasks", "4000", "--naive-tasks", "50", "--sweep", ""]
            if args.quick
            else [],
        ),
        ("aggregation", aggregation.main, ["--results", "200"] if args.quick else []),
        ("e2e", e2e.main, ["--shards", "50"] if args.quick else []),
        ("idle", idle.main, ["--seconds", "20", "--baseline-seconds", "2"] if args.quick else []),
    )
    for name, run, suite_args in suites:
        started = time.perf_counter()
        print(f"== benchmarks.{name} {' '.join(suite_args)}".rstrip(), flush=True)
        run(suite_args)
        print(f"== benchmarks.{name} done in {time.perf_counter() - started:.0f} s\n", flush=True)


if __name__ == "__main__":
    main()
