"""Kraken REST market data: the public ``Trades`` endpoint, its errors and limits, the pure page parser.

``GET /0/public/Trades?pair=XBTUSDT&since=<ns>&count=<1..1000>`` answers (docs.kraken.com, "Get Recent
Trades")::

    {"error": [], "result": {"XBTUSDT": [["105433.60000", "0.00027625", 1762795433.9717445, "b", "l", "", 10218208],
                                         ...], "last": "1762820035982277754"}}

Each row is ``[price, volume, time, side, ordertype, misc, trade_id]``: price and volume as decimal
strings, the time as a JSON number of seconds (floored here to the microsecond, from its text), side
``b``/``s`` (the taker's), ordertype ``l``/``m`` (limit/market), ``trade_id`` (the 7th element in
today's API; older answers had 6 elements and no id: such a row is refused ``missing_field``). ``last``
is the cursor of the next page (nanoseconds, a string): pass it as ``since``. Pages run oldest first,
at most 1000 trades.

Errors come in the ``error`` array, mostly with HTTP 200 ("Every response includes an error array — if
non-empty, the request failed", docs.kraken.com "API errors"): :func:`error_class` says what each
means to K2. Public endpoints are limited per IP and pair: "Calling the public endpoints at a
frequency of 1 per second (or less) would remain within the rate limits" (support.kraken.com, "What
are the API rate limits").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import msgspec

from k2.config import ValidationSettings
from k2.errors import SourceError
from k2.sources.base import ParsedBatch, RawFrame, RejectReason
from k2.sources.columns import brief
from k2.sources.kraken.trades import TradeFields, trade_batch
from k2.sources.kraken.values import json_scalar_text, seconds_us
from k2.sources.kraken.wire import LAUNCH_US
from k2.sources.symbols import Instrument
from k2.sources.validation import time_windows
from k2.sources.venue import FetchedTrades

TRADES_PATH = "/0/public/Trades"
ASSET_PAIRS_PATH = "/0/public/AssetPairs"
MAX_COUNT = 1000
REQUESTS_PER_S = 1.0  # per pair; K2's one backfill task asks one pair at a time
RATE_LIMIT_PAUSE_S = 2.0  # Kraken restricts "for a few seconds (or possibly longer if calls continue)"
RATE_LIMIT_PAUSE_MAX_S = 60.0

SIDES = {"b": "BUY", "s": "SELL"}
ORDER_TYPES = {"l": "limit", "m": "market"}  # written as the WebSocket's ord_type
REST_VENDOR_KEYS = ("ord_type", "misc", "rest_time", "backfilled")


class ErrorClass(StrEnum):
    """What an ``error`` entry of a Kraken answer means to a client."""

    RATE_LIMITED = "rate_limited"  # slow down, then ask again
    TRANSIENT = "transient"  # the service is busy or down for a while: retry with backoff
    PERMANENT = "permanent"  # the request is wrong (unknown pair, bad arguments): retrying cannot help


_RATE_LIMITED = ("EAPI:Rate limit exceeded", "EGeneral:Too many requests", "EService: Throttled", "EService:Throttled")
_TRANSIENT = ("EService:", "EGeneral:Internal error", "EGeneral:Temporary lockout")


def error_class(error: str) -> ErrorClass:
    if error.startswith(_RATE_LIMITED):
        return ErrorClass.RATE_LIMITED
    if error.startswith(_TRANSIENT):
        return ErrorClass.TRANSIENT
    return ErrorClass.PERMANENT


def throttled_until_s(error: str) -> float | None:
    """The UNIX time of ``EService: Throttled: <time>`` ("Try again after [timestamp]"); None otherwise."""
    if "Throttled" not in error:
        return None
    try:
        return float(error.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None


class _Answer(msgspec.Struct):
    error: list[str]
    result: dict[str, msgspec.Raw] = {}


_answer_decoder = msgspec.json.Decoder(_Answer)
_rows_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_row_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_id_decoder = msgspec.json.Decoder(int)
_str_decoder = msgspec.json.Decoder(str)


@dataclass(frozen=True)
class TradesPage:
    """A ``Trades`` answer: its ``error`` entries, or its trades (parsed) and the ``last`` cursor."""

    errors: tuple[str, ...]
    fetched: FetchedTrades | None = None
    last_ns: int | None = None  # None: no cursor (end of the data)


def parse_trades_page(
    payload: bytes,
    symbol: str,
    *,
    received_at_us: int,
    instrument: Instrument,
    validation: ValidationSettings | None = None,
) -> TradesPage:
    """A ``Trades`` body for ``symbol`` (its v2 name; rows carry no symbol). Raises SourceError only when
    the body is not a Kraken answer (cut off, garbled, or trades under no single pair key)."""
    try:
        answer = _answer_decoder.decode(payload)
    except (msgspec.DecodeError, RecursionError) as exc:  # ValidationError included
        raise SourceError(f"unexpected Trades response: {exc}") from exc
    if answer.error:
        return TradesPage(tuple(answer.error))
    result = dict(answer.result)
    last_raw = result.pop("last", None)
    if len(result) != 1:
        raise SourceError(f"Trades result holds {len(result)} pairs, not one: {brief(sorted(result))}")
    (rows_raw,) = result.values()
    try:
        rows = _rows_decoder.decode(rows_raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise SourceError(f"Trades rows are not an array: {exc}") from exc
    return TradesPage((), _parse_rows(rows, symbol, received_at_us, instrument, validation), _cursor(last_raw))


def _cursor(raw: msgspec.Raw | None) -> int | None:
    if raw is None:
        return None
    text = json_scalar_text(bytes(raw))
    if text is None or not text.isascii() or not text.isdigit():
        return None  # "" (Kraken's end of pagination) or anything unusable
    return int(text)


def _parse_rows(
    rows: list[msgspec.Raw], symbol: str, received_at_us: int, instrument: Instrument,
    validation: ValidationSettings | None,
) -> FetchedTrades:  # fmt: skip
    out = ParsedBatch()
    fields = TradeFields(REST_VENDOR_KEYS)
    for raw in rows:
        body = bytes(raw)
        group = fields.new_group(RawFrame(body, received_at_us))
        problem, values = _decode_row(body)
        if values is None:
            fields.add(group, symbol, 0, 0, "", "", "", True, (None, None, None, "true"), problem)
            continue
        price, qty, time_text, side, ord_type, misc, trade_id = values
        time_us = seconds_us(time_text)
        fields.add(group, symbol, trade_id, time_us or 0, price, qty, side, True,
                   (ord_type, misc, time_text, "true"), problem)  # fmt: skip
    _, history = time_windows(LAUNCH_US, validation or ValidationSettings())
    batch, ids = trade_batch(fields, out, live=history, history=history, instruments={symbol: instrument})
    return FetchedTrades(batch, ids, out)


_Row = tuple[str, str, str, str, str | None, str | None, int]


def _decode_row(body: bytes) -> tuple[tuple[RejectReason, str] | None, _Row | None]:
    """(problem, values) of one row; values None when the row cannot even be read."""
    try:
        items = _row_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        return (RejectReason.WRONG_TYPE, f"a trade row is not an array: {exc}"), None
    if len(items) < 7:
        return (RejectReason.MISSING_FIELD, f"{len(items)} elements; trade_id is the 7th"), None
    texts = [json_scalar_text(bytes(x)) for x in items[:3]]
    try:
        side_code = _str_decoder.decode(items[3])
        ord_code = _str_decoder.decode(items[4])
        misc = _str_decoder.decode(items[5])
        trade_id = _id_decoder.decode(items[6])
    except (msgspec.DecodeError, RecursionError) as exc:  # ValidationError included
        return (RejectReason.WRONG_TYPE, f"side, ordertype, misc must be strings, trade_id an integer: {exc}"), None
    price, qty, time_text = texts
    if price is None or qty is None or time_text is None or seconds_us(time_text) is None:
        return (RejectReason.WRONG_TYPE, "price, volume and time must be numbers"), None
    side = SIDES.get(side_code)
    problem = None if side is not None else (RejectReason.WRONG_TYPE, f"side {brief(side_code)} is neither b nor s")
    return problem, (price, qty, time_text, side or "", ORDER_TYPES.get(ord_code, ord_code), misc, trade_id)
