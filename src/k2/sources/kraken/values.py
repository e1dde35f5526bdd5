"""Kraken's values as text: JSON numbers read from their own text, RFC 3339 and epoch-second times. Pure.

Kraken WebSocket v2 sends prices and quantities as JSON *numbers* ("with engine precision"), e.g.
``0.10000000`` or ``66450.0``; its REST ``Trades`` sends them as strings and the trade time as a
number of seconds with up to 7 decimals (``1762820035.9822779``). A float cannot hold these values
(``0.1`` has no binary form) nor their trailing zeros, so K2 never lets a float touch them: the
decoder keeps each such field as raw JSON text (``msgspec.Raw``), and the helpers here read the
value from that text. Only plain decimal text reaches the exact ``decimal(38, 12)`` check
(:func:`k2.sources.validation.exact_decimal_mask`); an exponent form (``1e-8``, legal JSON though
Kraken does not write it) is rewritten to plain digits through :class:`decimal.Decimal`, exactly, and
an exponent too large to write out is left as it is, to be refused.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal, InvalidOperation

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_QUOTE = 0x22  # "
_MINUS = 0x2D  # -
_MAX_EXPONENT = 40  # |adjusted exponent| beyond this cannot fit decimal(38, 12) nor a µs timestamp: not expanded
_BEYOND_INT64 = 2**64  # a time too large to be real: any value outside int64 is refused as out of range

_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)


def json_scalar_text(raw: bytes) -> str | None:
    """The text of a JSON number, or the content of a JSON string; None for any other JSON value.

    A string's content is returned as written between its quotes (escapes included), so text such
    as ``"\\u0031"`` or ``" 1.5"`` is never silently cleaned into a valid number.
    """
    if not raw:
        return None
    first = raw[0]
    if first == _QUOTE:
        return raw[1:-1].decode("utf-8", "replace")
    if first == _MINUS or 0x30 <= first <= 0x39:
        text = raw.decode("ascii", "replace")
        return _plain(text) if "e" in text or "E" in text else text
    return None


def _plain(text: str) -> str:
    """An exponent-form JSON number written out in plain digits, exactly (``1.5e-3`` -> ``0.0015``)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        return text
    if abs(value.adjusted()) > _MAX_EXPONENT:
        return text  # left as it is: the decimal check refuses it
    return format(value, "f")


def rfc3339_us(text: str) -> int | None:
    """UTC microseconds of an RFC 3339 timestamp (``2024-05-27T12:33:10.826003Z``); finer fractions are
    floored to the microsecond. None when ``text`` is not RFC 3339 with a zone (``Z`` or an offset)."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    if int(hour) > 23 or int(minute) > 59 or int(second) > 59:
        return None
    try:
        midnight = datetime(int(year), int(month), int(day), tzinfo=UTC)
    except ValueError:  # no such date (month 13, 30 February, year 0)
        return None
    days = (midnight - _EPOCH).days
    us = ((days * 24 + int(hour)) * 60 + int(minute)) * 60 + int(second)
    us = us * 1_000_000 + int((fraction or "").ljust(6, "0")[:6])
    if sign is not None:
        if int(off_h) > 23 or int(off_m) > 59:
            return None
        offset_us = (int(off_h) * 60 + int(off_m)) * 60_000_000
        us += -offset_us if sign == "+" else offset_us
    return us


def seconds_us(text: str) -> int | None:
    """UTC microseconds of a time in epoch seconds written as decimal text (``1762820035.9822779``),
    floored to the microsecond. None when ``text`` is not a decimal number; an absurdly large value
    gives a number outside int64, which the time checks refuse."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value.adjusted() > _MAX_EXPONENT:
        return _BEYOND_INT64 if value > 0 else -_BEYOND_INT64
    if value.adjusted() < -_MAX_EXPONENT:
        return 0 if value >= 0 else -1
    return int((value * 1_000_000).to_integral_value(rounding=ROUND_FLOOR))


def us_to_rfc3339(us: int) -> str:
    """The RFC 3339 text of UTC microseconds, as Kraken v2 writes it (``2024-05-27T12:33:10.826003Z``)."""
    seconds, micros = divmod(us, 1_000_000)
    day = datetime.fromtimestamp(seconds, tz=UTC)
    return day.strftime("%Y-%m-%dT%H:%M:%S") + f".{micros:06d}Z"
