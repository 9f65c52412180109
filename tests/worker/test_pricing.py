"""The worker's price per hour (issue #25): the flag, else the instance type from IMDSv2 and the price
file, else unpriced; a fake metadata service on 127.0.0.1 stands in for EC2's."""

from __future__ import annotations

import pytest

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
    assert price.per_hour == price_file()["instances"]["p4d.24xlarge"]["on_demand"]
    assert "upper bound" in price.source and "--price-per-hour" in price.source


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
