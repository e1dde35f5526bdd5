"""Kraken's values read from their text: JSON numbers, RFC 3339 times, epoch seconds."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from k2.sources.kraken.values import json_scalar_text, rfc3339_us, seconds_us, us_to_rfc3339


def _us(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1_000_000)


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"0.10000000", "0.10000000"),  # the text, not 0.1
        (b"66450.0", "66450.0"),
        (b"0.010", "0.010"),
        (b"-68500.0", "-68500.0"),
        (b"12345678901234.123456789012", "12345678901234.123456789012"),
        (b'"105433.60000"', "105433.60000"),  # REST sends strings: their content
        (b'" 1.5"', " 1.5"),  # never cleaned up: the decimal check refuses it
        (b'"\\u0031"', "\\u0031"),
        (b"1e-8", "0.00000001"),  # exponents written out exactly
        (b"1.5E+3", "1500"),
        (b"1E+999999999", "1E+999999999"),  # too large to write out: left to be refused
        (b"null", None),
        (b"true", None),
        (b"[1]", None),
        (b'{"a":1}', None),
        (b"", None),
    ],
)
def test_json_scalar_text(raw: bytes, text: str | None) -> None:
    assert json_scalar_text(raw) == text


@pytest.mark.parametrize(
    ("text", "us"),
    [
        ("2024-05-27T12:33:10.826003Z", _us("2024-05-27T12:33:10.826003")),
        ("2024-05-27T12:33:10Z", _us("2024-05-27T12:33:10")),
        ("2024-05-27T12:33:10.8Z", _us("2024-05-27T12:33:10.800000")),
        ("2024-05-27T12:33:10.826003999Z", _us("2024-05-27T12:33:10.826003")),  # nanoseconds floored
        ("2024-05-27T14:33:10.826003+02:00", _us("2024-05-27T12:33:10.826003")),
        ("2024-05-27T10:03:10.826003-02:30", _us("2024-05-27T12:33:10.826003")),
        ("2024-05-27t12:33:10z", _us("2024-05-27T12:33:10")),
        ("1969-12-31T23:59:59.999999Z", -1),
        ("9999-12-31T23:59:59.999999Z", 253_402_300_799_999_999),
    ],
)
def test_rfc3339_to_utc_microseconds(text: str, us: int) -> None:
    assert rfc3339_us(text) == us


@pytest.mark.parametrize(
    "text",
    [
        "2024-05-27T12:33:10.826003",  # no zone
        "2024-05-27 12:33:10Z",
        "2024-02-30T12:33:10Z",
        "2024-05-27T24:00:00Z",
        "2024-05-27T12:60:00Z",
        "2024-05-27T12:33:60Z",  # leap seconds are not sent
        "2024-05-27T12:33:10.Z",
        "2024-05-27T12:33:10.1234567890Z",
        "0000-01-01T00:00:00Z",
        "٢٠٢٤-05-27T12:33:10Z",
        "2024-05-27T12:33:10+25:00",
        " 2024-05-27T12:33:10Z",
        "",
    ],
)
def test_what_is_not_rfc3339_with_a_zone(text: str) -> None:
    assert rfc3339_us(text) is None


@pytest.mark.parametrize(
    ("text", "us"),
    [
        ("1762820035.9822779", 1_762_820_035_982_277),  # floored, from the text: a float gives ...982277.9
        ("1762795483.306824", 1_762_795_483_306_824),
        ("1548111751.5556", 1_548_111_751_555_600),
        ("1762795433", 1_762_795_433_000_000),
        ("1.7627954339717445e9", 1_762_795_433_971_744),
        ("-1.5", -1_500_000),
        ("1e999999999", 2**64),  # beyond int64: refused as out of range downstream
        ("1e-999999999", 0),
    ],
)
def test_epoch_seconds_floor_to_the_microsecond(text: str, us: int) -> None:
    assert seconds_us(text) == us


@pytest.mark.parametrize("text", ["", "abc", "NaN", "Infinity", "1,5"])
def test_what_is_not_a_number_of_seconds(text: str) -> None:
    assert seconds_us(text) is None


def test_microseconds_back_to_krakens_text() -> None:
    assert us_to_rfc3339(1_762_795_433_971_744) == "2025-11-10T17:23:53.971744Z"
    assert us_to_rfc3339(1_378_771_200_000_000) == "2013-09-10T00:00:00.000000Z"
    assert rfc3339_us(us_to_rfc3339(1_716_813_190_826_003)) == 1_716_813_190_826_003
