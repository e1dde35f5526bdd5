"""Kraken's number and epoch-second text (its RFC 3339 times: tests/unit/sources/test_timestamps.py)."""

from __future__ import annotations

import pytest

from k2.sources.kraken.values import json_scalar_text, seconds_us


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
