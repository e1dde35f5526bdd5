"""Coinbase Exchange REST market data: the trades endpoint, its cursors, and the pure page parser.

``GET /products/{product_id}/trades?after=&limit=`` (public, no credentials) answers a JSON array,
newest first, of::

    {"time": "2020-02-17T07:23:16.353Z", "trade_id": 24169717, "price": "9042.88000000",
     "size": "0.00846511", "side": "sell"}

Cursor pagination by trade id (docs: exchange/rest-api/pagination): ``after=X`` asks for the page of
trades *older* than X (ids below X), at most ``limit`` (<= 1000) of them; the response headers
``CB-BEFORE`` and ``CB-AFTER`` hold the newest and the oldest id of the page, the cursors of the next
newer and older page. Trade ids are consecutive per product, so K2 asks for a gap's ids ``a..b``
page by page as ``after = a + limit`` (the ids ``a .. a + limit - 1``), oldest page first.

:func:`parse_trades_page` turns a body into the same canonical trades the stream parser produces
(same message ids, prices, sides, timestamps), with ``vendor_data`` telling them apart:
``backfilled = "true"`` and no order ids or feed sequence (REST has none). Each element is checked
like a stream frame and rejected on its own (its exact JSON is the quarantined frame).
"""

from __future__ import annotations

import msgspec
import pyarrow as pa

from k2.config import ValidationSettings
from k2.errors import SourceError
from k2.sources.base import ParsedBatch, RawFrame, Rejected, RejectReason
from k2.sources.coinbase import trades
from k2.sources.coinbase.wire import RestTrade
from k2.sources.columns import brief, map_from_columns
from k2.sources.symbols import Instrument
from k2.sources.timestamps import parse_us
from k2.sources.venue import FetchedTrades

TRADES_PATH = "/products/{product_id}/trades"
BEFORE_HEADER = "CB-BEFORE"
AFTER_HEADER = "CB-AFTER"
RATE_LIMIT_STATUSES = (429,)

_VENDOR_KEYS = ("maker_side", "base_asset", "quote_asset", "backfilled")
_page_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_trade_decoder = msgspec.json.Decoder(RestTrade)


def trades_path(product_id: str) -> str:
    return TRADES_PATH.format(product_id=product_id)


def page_params(from_id: int, last_id: int, limit: int) -> dict[str, str]:
    """Query of the page holding ids ``from_id`` up to ``min(last_id, from_id + limit - 1)``."""
    size = max(1, min(limit, last_id - from_id + 1))
    return {"after": str(from_id + size), "limit": str(size)}


def decode_page(payload: bytes) -> list[msgspec.Raw]:
    """The elements of a trades body, undecoded; SourceError when it is not a JSON array (an error
    object, a cut-off or garbled body: the page as a whole is bad)."""
    try:
        return _page_decoder.decode(payload)
    except (msgspec.DecodeError, RecursionError) as exc:  # ValidationError included; RecursionError: too deep
        raise SourceError(f"unexpected /products/{{id}}/trades response: {exc}") from exc


def parse_trades_page(
    payload: bytes,
    product_id: str,
    *,
    received_at_us: int,
    instrument: Instrument,
    validation: ValidationSettings | None = None,
) -> FetchedTrades:
    """Canonical trades (wire form) of a ``/products/{product_id}/trades`` body, oldest first. Raises
    SourceError only when the body is not a JSON array."""
    out = ParsedBatch()
    fields = trades.TradeFields()
    for raw in reversed(decode_page(payload)):  # the venue sends newest first; K2 stores in id order
        frame = RawFrame(bytes(raw), received_at_us)
        try:
            r = _trade_decoder.decode(raw)
        except (msgspec.DecodeError, RecursionError) as exc:
            reason = RejectReason.MISSING_FIELD if "missing required field" in str(exc) else RejectReason.WRONG_TYPE
            out.rejected.append(Rejected(frame, reason, str(exc)))
            continue
        time_us = parse_us(r.time)
        if time_us is None:
            detail = f"time {brief(r.time)} is not an RFC 3339 timestamp"
            out.rejected.append(Rejected(frame, RejectReason.WRONG_TYPE, detail))
            continue
        fields.add(frame, product_id, r.trade_id, time_us, r.time, r.price, r.size, r.side)
    if not len(fields):
        return FetchedTrades(None, [], out)
    _, replay = trades.time_windows(validation or ValidationSettings())
    checked = trades.check_trades(fields, out, window=replay)
    if not checked.keep.any():
        return FetchedTrades(None, [], out)
    n = len(checked.rows)
    vendor = map_from_columns(
        _VENDOR_KEYS,
        [
            pa.array(trades.kept(fields.maker_sides, checked), pa.string()),
            pa.repeat(instrument.base, n),
            pa.repeat(instrument.quote, n),
            pa.repeat("true", n),
        ],
        n,
    )
    batch = trades.trade_columns(fields, checked, instruments={product_id: instrument}, vendor_data=vendor)
    return FetchedTrades(batch, checked.ids[checked.keep].tolist(), out)
