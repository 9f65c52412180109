"""``shardq estimate --latency``: a round's coordination p50/p99 on AWS, before and after the fast queue.

The model is ``shardq.core.latency``; this module reads the stack's settings (a synthesized template,
else cdk.json's context), prints the table and the cost side, and nothing else.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from shardq.cli.common import EXIT_OK, CliError, print_json
from shardq.core import latency

DEFAULT_SHARDS = 2


def add_options(p: argparse.ArgumentParser) -> None:
    """The ``--latency`` flag of ``shardq estimate`` and what it reads."""
    p.add_argument(
        "--latency",
        action="store_true",
        help="a FedAvg round's coordination p50/p99 on AWS from the stack's settings, before and after the "
        "fast results queue, and the cost per result of each path (no request needed)",
    )
    p.add_argument(
        "--template",
        type=Path,
        default=None,
        help="with --latency: the synthesized stack template to read the event sources from "
        "(cdk.out/shardq.template.json); default: ./cdk.json's context",
    )


def _paths(args: argparse.Namespace) -> latency.StackPaths:
    if args.template is not None:
        try:
            return latency.paths_from_template(json.loads(args.template.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, ValueError) as exc:
            raise CliError(f"--template {args.template}: {exc}") from exc
    cdk_json = Path("cdk.json")
    context: dict[str, Any] = {}
    if cdk_json.is_file():
        try:
            context = dict(json.loads(cdk_json.read_text(encoding="utf-8")).get("context", {}))
        except json.JSONDecodeError as exc:
            raise CliError(f"cdk.json: {exc}; fix the file or pass --template") from exc
    paths = latency.paths_from_context(context)
    if not cdk_json.is_file():
        paths = latency.StackPaths(paths.bulk, paths.fast, "the stack's defaults (no ./cdk.json here)")
    return paths


def _shards(args: argparse.Namespace) -> int:
    if args.shards is not None:
        if args.shards < 1:
            raise CliError(f"--shards must be >= 1, got {args.shards}")
        return int(args.shards)
    if args.request is not None:
        from shardq.cli.estimate import _request  # the request reader the cost estimate uses

        return int(_request(args).task_count)
    return DEFAULT_SHARDS


def render(r: dict[str, Any]) -> str:
    """The before/after table, the hops of the after path, and the cost per result."""
    before, after = r["before"], r["after"]
    bulk, fast = r["paths"]["bulk"], r["paths"]["fast"]
    lines = [
        f"A round of {after['shards']} train tasks + 1 reduce on AWS, coordination only "
        f"(settings: {r['source']})",
        f"  bulk results source: batch {bulk['batch_size']}, window {bulk['window_s']:g} s"
        + (
            f"; fast: batch {fast['batch_size']}, window {fast['window_s']:g} s"
            if fast
            else "; no fast queue"
        ),
        "",
        f"  {'':<28}{'p50':>9}{'p99':>9}{'p99 bound':>11}   routes (train, reduce)",
    ]
    for name, x in (("before (bulk path only)", before), ("after (this stack)", after)):
        routes = f"{x['routes']['train']}, {x['routes']['reduce']}"
        lines.append(
            f"  {name:<28}{x['p50_s']:>8.3f}s{x['p99_s']:>8.3f}s{x['p99_bound_s']:>10.3f}s   {routes}"
        )
    lines += ["", "  critical path (after):"]
    for hop in after["hops"]:
        p50, p99 = hop["p50_s"] * 1000, hop["p99_s"] * 1000
        lines.append(f"    {hop['name']:<62} p50 {p50:>6.0f} ms  p99 {p99:>6.0f} ms  [{hop['source']}]")
    lines += [
        "",
        "  cost per result:     invocations (alone / full batch)   DynamoDB write units (alone / full)",
    ]
    for name, rows in r["cost_per_result"].items():
        a, f = rows["alone"], rows["full"]
        invocations = f"{a['invocations_per_result']:>6g} / {f['invocations_per_result']:<8g}"
        units = f"{a['write_units_per_result']:>10g} / {f['write_units_per_result']:g}"
        lines.append(
            f"    {name:<6} path      {invocations} ({f['results_per_invocation']} per batch)   {units}"
        )
    return "\n".join(lines)


def cmd_latency(args: argparse.Namespace) -> int:
    """Print (or ``--json``) the latency model's report for this stack's settings."""
    result = latency.report(_paths(args), _shards(args))
    if args.json:
        print_json(result)
    else:
        print(render(result))
    return EXIT_OK
