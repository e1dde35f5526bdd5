"""RFC 3339 text <-> UTC microseconds (k2.sources.timestamps), against Python's own datetime arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k2.sources.timestamps import format_us, parse_us

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DATETIME_US = st.integers(
    min_value=(datetime(1, 1, 1, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1),
    max_value=(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1),
)


@settings(max_examples=2_000, derandomize=True, database=None)
@given(DATETIME_US)
def test_format_and_parse_agree_with_datetime_for_every_instant_it_can_hold(us: int) -> None:
    text = format_us(us)
    assert text == (EPOCH + timedelta(microseconds=us)).isoformat(timespec="microseconds").replace("+00:00", "Z")
    assert datetime.fromisoformat(text) == EPOCH + timedelta(microseconds=us)
    assert parse_us(text) == us


@settings(max_examples=500, derandomize=True, database=None)
@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_parse_inverts_format_far_beyond_year_9999(us: int) -> None:
    assert parse_us(format_us(us)) == us


@pytest.mark.parametrize(
    ("text", "us"),
    [
        ("2021-04-17T16:43:37.056746Z", 1_618_677_817_056_746),
        ("2020-02-17T07:16:30.2Z", 1_581_923_790_200_000),  # Coinbase REST, trailing zeros dropped
        ("2026-08-09T21:05:48.228568804Z", 1_786_309_548_228_568),  # nanoseconds: floored, never rounded up
        ("2026-08-09T21:05:48.999999999Z", 1_786_309_548_999_999),
        ("2021-04-17T18:43:37.056746+02:00", 1_618_677_817_056_746),
        ("2021-04-17T14:43:37.056746-02:00", 1_618_677_817_056_746),
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59.999999Z", -1),
        ("2024-02-29T00:00:00z", 1_709_164_800_000_000),
        ("10000-01-01T00:00:00Z", 253_402_300_800_000_000),  # parses: the time window calls it out of range
        ("+294247-01-10T04:00:54.775808Z", 2**63),
    ],
)
def test_known_instants(text: str, us: int) -> None:
    assert parse_us(text) == us


@pytest.mark.parametrize(
    "text",
    ["", "2021-04-17", "2021-04-17T16:43:37", "2021-04-17 16:43:37Z", "2021-02-29T00:00:00Z", "2021-04-31T00:00:00Z",
     "2021-13-01T00:00:00Z", "2021-04-17T24:00:00Z", "2021-04-17T23:60:00Z", "2021-04-17T23:59:60Z",
     "2021-04-17T16:43:37.Z", "2021-04-17T16:43:37.1234567890Z", "2021-04-17T16:43:37+24:00", "21-04-17T16:43:37Z",
     "２０２１-04-17T16:43:37Z", " 2021-04-17T16:43:37Z", "2021-04-17T16:43:37Z ", "1618677817"],
)  # fmt: skip
def test_text_that_is_no_rfc3339_timestamp_is_none(text: str) -> None:
    assert parse_us(text) is None
