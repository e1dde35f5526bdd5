"""Kraken's bad frames for fault injection (:class:`k2.emulator.faults.BadFrames`), built from real frames.

Each kind changes one thing in the first element of a real v2 ``trade`` message (or, for
``crossed_quote``, swaps the bid and the ask of a ``ticker``). The frame is decoded with every number
kept as a :class:`~decimal.Decimal` of its own text and encoded back as JSON numbers, so the numbers a
mutation does not touch keep their text exactly. :func:`expected_reasons` of the protocol maps every
kind to the reason :class:`k2.sources.kraken.parser.KrakenParser` must give it
(tests/unit/emulator/test_kraken.py proves it).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from k2.emulator.faults import CROSSED_QUOTE, OutFrame
from k2.sources.base import RejectReason

FOREIGN_PREFIX = "XK2"  # a symbol no subscription names: XK2BTC/USDT

ADVERSARIAL_KINDS: dict[str, RejectReason] = {
    "data_not_list": RejectReason.WRONG_TYPE,  # `data` = its first element (an object)
    "channel_not_string": RejectReason.WRONG_TYPE,  # `channel` = ["trade"]
    "price_string_space": RejectReason.INVALID_NUMBER,  # price = " <text>" (a string)
    "price_non_ascii_digits": RejectReason.INVALID_NUMBER,  # price's digits in Arabic-Indic script (a string)
    "price_string_nan": RejectReason.INVALID_NUMBER,  # price = "NaN"
    "price_50_digits": RejectReason.INVALID_NUMBER,  # a 50-digit JSON number
    "price_38_digits": RejectReason.INVALID_NUMBER,  # 38 ones (pyarrow's decimal cast once wrapped it silently)
    "qty_huge_exponent": RejectReason.INVALID_NUMBER,  # qty = 1E+999999999 (must not be written out)
    "trade_id_2_64": RejectReason.OUT_OF_RANGE,  # trade_id = 2^64
    "trade_id_negative": RejectReason.OUT_OF_RANGE,  # trade_id = -trade_id
    "trade_id_fraction": RejectReason.WRONG_TYPE,  # trade_id + 0.5
    "timestamp_no_zone": RejectReason.WRONG_TYPE,  # the trailing Z removed
    "timestamp_before_launch": RejectReason.OUT_OF_RANGE,  # the day before Kraken opened (2013-09-09)
    "timestamp_far_future": RejectReason.OUT_OF_RANGE,  # 300 years later
    "timestamp_year_9999": RejectReason.OUT_OF_RANGE,  # 9999-12-31T23:59:59.999999Z
    "side_unknown": RejectReason.WRONG_TYPE,  # side = "hold"
    "unsubscribed_symbol": RejectReason.UNSUBSCRIBED,  # symbol = XK2<symbol>
    "unsubscribed_channel": RejectReason.UNSUBSCRIBED,  # channel = "book" (never subscribed)
}
"""Adversarial kinds ``adversarial_every`` cycles through for Kraken, in order, with the parser's reason."""

_decoder = msgspec.json.Decoder(float_hook=Decimal)
_encoder = msgspec.json.Encoder(decimal_format="number")
_ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


def bad_frame(source: OutFrame, kind: str) -> OutFrame:
    """A frame of ``kind`` built from a real ``trade`` (or, for ``crossed_quote``, ``ticker``) message,
    routed like it."""
    if kind == "malformed_json":  # cut in half: no longer JSON
        cut = source.raw[: len(source.raw) // 2]
        return OutFrame(source.stream, cut, cut, source.recv_us, kind)
    message: dict[str, Any] = _decoder.decode(source.raw)
    first: dict[str, Any] = message["data"][0]
    if kind == CROSSED_QUOTE:
        first["bid"], first["ask"] = first["ask"], first["bid"]
    elif kind == "data_not_list":
        message["data"] = first
    elif kind == "channel_not_string":
        message["channel"] = [message["channel"]]
    elif kind == "unknown_event":
        message["type"] = "unknownEvent"
    elif kind == "unsubscribed_channel":
        message["channel"] = "book"
    elif kind == "missing_field":
        del first["price"]
    else:
        first.update(_changes(first, kind))
    raw = _encoder.encode(message)
    return OutFrame(source.stream, raw, raw, source.recv_us, kind)


def _changes(trade: dict[str, Any], kind: str) -> dict[str, Any]:
    """The fields ``kind`` sets in one trade."""
    price: Decimal = trade["price"]
    text = format(price, "f")
    stamp: str = trade["timestamp"]
    trade_id: int = trade["trade_id"]
    if kind == "timestamp_far_future":
        return {"timestamp": str(int(stamp[:4]) + 300) + stamp[4:]}
    changes: dict[str, dict[str, Any]] = {
        "wrong_type": {"trade_id": str(trade_id)},
        "invalid_number": {"price": "not-a-number"},
        "non_positive": {"price": -price},
        "price_string_space": {"price": " " + text},
        "price_non_ascii_digits": {"price": text.translate(_ARABIC_INDIC)},
        "price_string_nan": {"price": "NaN"},
        "price_50_digits": {"price": Decimal("9" * 50)},
        "price_38_digits": {"price": Decimal("1" * 38)},
        "qty_huge_exponent": {"qty": Decimal("1E+999999999")},
        "trade_id_2_64": {"trade_id": 2**64},
        "trade_id_negative": {"trade_id": -trade_id},
        "trade_id_fraction": {"trade_id": Decimal(trade_id) + Decimal("0.5")},
        "timestamp_no_zone": {"timestamp": stamp.rstrip("Zz")},
        "timestamp_before_launch": {"timestamp": "2013-09-09T23:59:59.999999Z"},
        "timestamp_year_9999": {"timestamp": "9999-12-31T23:59:59.999999Z"},
        "side_unknown": {"side": "hold"},
        "unsubscribed_symbol": {"symbol": FOREIGN_PREFIX + str(trade["symbol"])},
    }
    if kind not in changes:
        raise ValueError(f"unknown bad-frame kind {kind!r}")
    return changes[kind]
