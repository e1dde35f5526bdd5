"""Kraken's values as text: JSON numbers read from their own text, epoch-second times. Pure.

Kraken WebSocket v2 sends prices and quantities as JSON *numbers* ("with engine precision"), e.g.
``0.10000000`` or ``66450.0``; its REST ``Trades`` sends them as strings and the trade time as a
number of seconds with up to 7 decimals (``1762820035.9822779``). A float cannot hold these values
(``0.1`` has no binary form) nor their trailing zeros, so K2 never lets a float touch them: the
decoder keeps each such field as raw JSON text (``msgspec.Raw``), and the helpers here read the
value from that text. Only plain decimal text reaches the exact ``decimal(38, 12)`` check
(:func:`k2.sources.validation.exact_decimal_mask`); an exponent form (``1e-8``, legal JSON though
Kraken does not write it) is rewritten to plain digits through :class:`decimal.Decimal`, exactly, and
an exponent too large to write out is left as it is, to be refused.

Kraken's RFC 3339 times (WebSocket v2 ``timestamp``) are read by the shared
:func:`k2.sources.timestamps.parse_us`. These helpers stay here because only Kraken writes prices as
JSON numbers and times as epoch-second text; they move to :mod:`k2.sources` when a second venue does.
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal, InvalidOperation

_QUOTE = 0x22  # "
_MINUS = 0x2D  # -
_MAX_EXPONENT = 40  # |adjusted exponent| beyond this cannot fit decimal(38, 12) nor a µs timestamp: not expanded
_BEYOND_INT64 = 2**64  # a time too large to be real: any value outside int64 is refused as out of range


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
