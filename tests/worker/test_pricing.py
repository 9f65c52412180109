"""The worker's price per hour (issue #25): the flag, else the instance type from IMDSv2 and the price
file, else unpriced; a fake metadata service on 127.0.0.1 stands in for EC2's."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import pytest

from shardq.worker import pricing
from shardq.worker.pricing import INSTANCE_TYPE, LIFE_CYCLE, price_file, resolve
from shardq.worker.stop import DEFAULT_IMDS_ENDPOINT
from tests.worker.fake_imds import FakeImds


def test_the_flag_wins_over_the_metadata() -> None:
    with FakeImds() as imds:
        imds.values[INSTANCE_TYPE] = "p5.48xlarge"
        price = resolve(12.5, imds.endpoint)
    assert (price.per_hour, price.source) == (12.5, "--price-per-hour")
    assert imds.requests == []  # not even asked


def test_an_on_demand_instance_is_priced_from_the_file() -> None:
    with FakeImds() as imds:
        imds.values[INSTANCE_TYPE] = "g5.xlarge"
        imds.values[LIFE_CYCLE] = "on-demand"
        price = resolve(None, imds.endpoint)
    assert price.per_hour == price_file()["instances"]["g5.xlarge"]["on_demand"] > 0
    assert "g5.xlarge on-demand" in price.source and "us-east-1" in price.source


def test_a_spot_instance_without_a_spot_figure_is_priced_at_on_demand_and_says_so() -> None:
    with FakeImds() as imds:
        imds.values[INSTANCE_TYPE] = "p4d.24xlarge"
        imds.values[LIFE_CYCLE] = "spot"
        price = resolve(None, imds.endpoint)
    entry = price_file()["instances"]["p4d.24xlarge"]
    assert price.per_hour == entry["on_demand"]
    assert "upper bound" in price.source and "--price-per-hour" in price.source
    # The catalog's Spot snapshot is quoted so the operator sees the gap, never recorded.
    ref = entry["spot_reference"]
    assert f"${ref['min']:g} to ${ref['max']:g}/h across {len(ref['zones'])} zones" in price.source
    assert price.per_hour > ref["max"]


def test_an_unlisted_type_and_no_metadata_are_unpriced() -> None:
    with FakeImds() as imds:
        imds.values[INSTANCE_TYPE] = "m7g.large"
        unlisted = resolve(None, imds.endpoint)
    assert not unlisted.priced and "not in instance_prices.json" in unlisted.source
    # A port nothing listens on: a laptop's "no metadata service".
    nowhere = resolve(None, "http://127.0.0.1:9")
    assert not nowhere.priced and nowhere.source.startswith("unpriced: no instance metadata")
    assert not resolve(None, None).priced


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), 1e9])
def test_a_bad_flag_is_refused_naming_it(bad: float) -> None:
    with pytest.raises(ValueError, match="--price-per-hour must be a number of USD per hour"):
        resolve(bad, DEFAULT_IMDS_ENDPOINT)


def test_every_price_in_the_file_is_a_positive_number() -> None:
    book = price_file()
    assert book["currency"] == "USD" and book["as_of"] and book["//"]
    for name, entry in book["instances"].items():
        assert entry["on_demand"] > 0, name
        assert entry.get("spot", 1) > 0, name


def test_every_price_names_its_source_and_when_it_was_checked() -> None:
    book = price_file()
    as_of = date.fromisoformat(book["as_of"])
    for name, entry in book["instances"].items():
        assert entry["checked"] and isinstance(entry["confirmed"], bool), name
        assert date.fromisoformat(entry["checked"]) <= as_of, name
        for key in entry["source"].split("; "):
            assert key in book["sources"], f"{name}: source {key!r} is not described under 'sources'"
        assert "spot" not in entry, f"{name}: Spot has no list price; the file must not pretend it does"


def test_every_figure_is_confirmed_from_a_pinned_linkable_source() -> None:
    """A figure is citable: a link in 'sources', the catalog pinned to one commit (its rows
    change with every regeneration), and each source described is used by some entry."""
    book = price_file()
    for key, text in book["sources"].items():
        assert text.startswith("https://"), f"source {key!r} has no link"
    assert re.search(r"/blob/[0-9a-f]{40}/", book["sources"]["skypilot-catalog"])
    used = {k for e in book["instances"].values() for k in e["source"].split("; ")}
    assert used == set(book["sources"]), f"described but unused: {set(book['sources']) - used}"
    for name, entry in book["instances"].items():
        assert entry["confirmed"] is True, f"{name}: not confirmed; read it from a linked source or drop it"


def test_every_spot_reference_is_a_range_below_on_demand_in_region_zones() -> None:
    for name, entry in price_file()["instances"].items():
        ref = entry["spot_reference"]
        assert 0 < ref["min"] <= ref["max"] <= entry["on_demand"], name
        assert ref["zones"] and all(re.fullmatch(r"use1-az\d", z) for z in ref["zones"]), name


def _book_with(monkeypatch: pytest.MonkeyPatch, name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The real price file plus one entry, as the worker would read it."""
    real = price_file()
    book = {**real, "instances": {**real["instances"], name: entry}}
    monkeypatch.setattr(pricing, "price_file", lambda: book)
    return book


def test_an_unconfirmed_figure_says_so_in_the_workers_log_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shipped figure is confirmed; one added from an unlinkable table must say so."""
    book = _book_with(
        monkeypatch,
        "g9.xlarge",
        {
            "on_demand": 1.5,
            "gpus": "1 x X",
            "source": "skypilot-catalog",
            "checked": "2026-12-07",
            "confirmed": False,
        },
    )
    with FakeImds() as imds:
        imds.values[INSTANCE_TYPE] = "g9.xlarge"
        weak = resolve(None, imds.endpoint)
        imds.values[INSTANCE_TYPE] = "g5.xlarge"
        firm = resolve(None, imds.endpoint)
    assert weak.per_hour == 1.5 and "not confirmed" in weak.source
    assert "not confirmed" not in firm.source
    assert f"checked {book['instances']['g5.xlarge']['checked']}" in firm.source


def test_a_spot_instance_of_a_type_without_a_reference_is_still_an_upper_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _book_with(
        monkeypatch,
        "g9.xlarge",
        {
            "on_demand": 1.5,
            "gpus": "1 x X",
            "source": "skypilot-catalog",
            "checked": "2026-12-07",
            "confirmed": True,
        },
    )
    with FakeImds() as imds:
        imds.values[INSTANCE_TYPE] = "g9.xlarge"
        imds.values[LIFE_CYCLE] = "spot"
        price = resolve(None, imds.endpoint)
    assert price.per_hour == 1.5 and "upper bound" in price.source and "Spot reference" not in price.source


def test_the_fleet_sets_a_spot_price_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Spot fleet's launch template exports SHARDQ_PRICE_PER_HOUR: the worker then carries that
    figure and never asks the metadata, so a Spot worker is not billed at on-demand."""
    from shardq.cli import build_parser

    monkeypatch.setenv("SHARDQ_PRICE_PER_HOUR", "0.45")
    args = build_parser().parse_args(["worker"])
    assert args.price_per_hour == 0.45
    with FakeImds() as imds:
        imds.values[INSTANCE_TYPE] = "g5.xlarge"
        imds.values[LIFE_CYCLE] = "spot"
        price = resolve(args.price_per_hour, imds.endpoint)
    assert (price.per_hour, price.source) == (0.45, "--price-per-hour") and imds.requests == []
    # The command line still wins over the environment.
    assert build_parser().parse_args(["worker", "--price-per-hour", "1.5"]).price_per_hour == 1.5


def test_a_bad_price_in_the_environment_is_a_usage_error_naming_the_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from shardq.cli import build_parser

    monkeypatch.setenv("SHARDQ_PRICE_PER_HOUR", "cheap")
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["worker"])
    assert exit_.value.code == 2 and "--price-per-hour" in capsys.readouterr().err
