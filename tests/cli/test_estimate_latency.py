"""``shardq estimate --latency``: a round's coordination p50/p99 from the stack's settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shardq.cli import main

ROOT = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_latency_reads_cdk_json_and_prints_before_and_after(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # ./cdk.json: results_batch_window_seconds 5
    code, out, _ = run(capsys, "estimate", "--latency")
    assert code == 0
    assert "cdk.json context" in out and "window 5 s" in out
    assert "before (bulk path only)" in out and "after (this stack)" in out
    code, out, _ = run(capsys, "estimate", "--latency", "--json")
    r = json.loads(out)
    assert r["after"]["p50_s"] <= 0.5 and r["after"]["p99_s"] <= 3.0 and r["before"]["p50_s"] >= 10


def test_latency_reads_a_template_and_a_requests_round_size(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # GIVEN a template whose bulk source has a 20 s window and no fast queue (an older stack)
    template = tmp_path / "t.json"
    template.write_text(
        json.dumps(
            {
                "Resources": {
                    "M": {
                        "Type": "AWS::Lambda::EventSourceMapping",
                        "Properties": {
                            "EventSourceArn": {"Fn::GetAtt": ["ResultsQueue", "Arn"]},
                            "BatchSize": 100,
                            "MaximumBatchingWindowInSeconds": 20,
                        },
                    }
                }
            }
        )
    )
    request = tmp_path / "r.json"
    request.write_text(
        json.dumps({"kind": "data_parallel", "dataset": {"num_samples": 100}, "sharding": {"shard_count": 4}})
    )
    code, out, _ = run(capsys, "estimate", str(request), "--latency", "--template", str(template), "--json")
    r = json.loads(out)
    # THEN the round is the request's 4 shards, every result is on the bulk path, two 20 s windows
    assert code == 0 and r["after"]["shards"] == 4 and r["paths"]["fast"] is None
    assert r["after"]["routes"] == {"train": "bulk", "reduce": "bulk"} and r["after"]["p50_s"] >= 40


def test_bad_input_names_the_fix(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "estimate")
    assert code == 2 and "a request file is required" in err and "--latency" in err
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    code, _, err = run(capsys, "estimate", "--latency", "--template", str(empty))
    assert code == 2 and "no event source mapping on ResultsQueue" in err and "cdk synth" in err
    code, _, err = run(capsys, "estimate", "--latency", "--shards", "0")
    assert code == 2 and "--shards must be >= 1" in err
