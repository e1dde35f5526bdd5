"""CoinbaseParser: Coinbase Exchange frames for one subscription, routed on ``type`` to a kind's parser.

K2 opens one connection to ``wss://ws-feed.exchange.coinbase.com`` and sends one ``subscribe`` naming
each channel with its products (``matches`` for trades, ``ticker`` for quotes, ``heartbeat`` always),
the per-channel form Coinbase requires since late 2023. Every message says what it is in ``type``:

=========================  =====================================================================
``match``, ``last_match``  a trade (:mod:`k2.sources.coinbase.trades`)
``ticker``                 a quote (:mod:`k2.sources.coinbase.quotes`)
``subscriptions``          the (un)subscribe acknowledgement: control
``heartbeat``              liveness, once a second per product: control
``error``                  the venue refused something (e.g. a subscription): quarantined ``venue_error``
=========================  =====================================================================

A message of a channel or product outside the subscription (a ``ticker`` when only trades were
asked for, ``l2update``, another product) is quarantined ``unsubscribed``; a type Coinbase does not
document is ``unknown_event``. Every frame ends up as one row, one reject or one control reply:
nothing in a frame can make :meth:`CoinbaseParser.parse` raise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec
import pyarrow as pa

from k2.config import ValidationSettings
from k2.errors import ConfigError
from k2.schema.kinds import RecordKind
from k2.sources.base import (
    ParsedBatch,
    RawFrame,
    Rejected,
    RejectReason,
    decode_or_reject,
    not_an_object,
    subscription,
)
from k2.sources.coinbase import quotes, trades, wire
from k2.sources.coinbase.wire import CHANNEL_OF_TYPE, HEARTBEAT, LAUNCH_US, MATCHES, MAX_PRODUCTS_PER_CONNECTION, TICKER
from k2.sources.columns import brief, map_from_columns
from k2.sources.symbols import Instrument
from k2.sources.timestamps import parse_us
from k2.sources.validation import time_windows
from k2.sources.venue import SymbolRules

STREAMS: Mapping[RecordKind, str] = {RecordKind.TRADES: MATCHES, RecordKind.QUOTES: TICKER}
_STREAM_VENDOR_KEYS = (
    "maker_side",
    "type",
    "sequence",
    "maker_order_id",
    "taker_order_id",
    "base_asset",
    "quote_asset",
)
_encode = msgspec.json.Encoder().encode


class CoinbaseParser:
    """Coinbase Exchange trades and best bid/ask for ``symbols`` (product ids) x ``kinds``. Pure."""

    def __init__(
        self,
        symbols: Sequence[str],
        kinds: Sequence[RecordKind] = (RecordKind.TRADES,),
        *,
        rules: SymbolRules,
        validation: ValidationSettings | None = None,
        is_sample_data: bool = False,
    ) -> None:
        self.symbols, self.kinds = subscription("coinbase", (rules.native(s) for s in symbols), kinds, STREAMS)
        if len(self.symbols) > MAX_PRODUCTS_PER_CONNECTION:
            raise ConfigError(f"at most {MAX_PRODUCTS_PER_CONNECTION} Coinbase products per run")
        self.instruments: dict[str, Instrument] = {s: rules.instrument(s) for s in self.symbols}
        self.channels: tuple[str, ...] = (*(STREAMS[k] for k in self.kinds), HEARTBEAT)
        self._products = frozenset(self.symbols)
        live, replay = time_windows(LAUNCH_US, validation or ValidationSettings())
        self.window = replay if is_sample_data else live

    # --- connection -------------------------------------------------------------------------------
    def stream_urls(self, base_url: str) -> list[str]:
        """One connection: the feed's URL itself (the subscription is a message)."""
        return [base_url.rstrip("/")]

    def subscribe_messages(self) -> list[str]:
        """One ``subscribe`` naming every channel with its products (sent within Coinbase's 5 s)."""
        channels = [{"name": c, "product_ids": list(self.symbols)} for c in self.channels]
        return [_encode({"type": "subscribe", "channels": channels}).decode()]

    # --- parsing ----------------------------------------------------------------------------------
    def parse(self, frames: Sequence[RawFrame]) -> ParsedBatch:
        out = ParsedBatch()
        matches = trades.TradeFields()
        extras: list[wire.Match] = []
        tickers = quotes.TickerFields()
        for frame in frames:
            channel = self._route(frame, out)
            if channel == MATCHES:
                self._decode_match(frame, matches, extras, out)
            elif channel == TICKER:
                self._decode_ticker(frame, tickers, out)
        if len(matches):
            batch = self._trades(matches, extras, out)
            if batch is not None:
                out.records[RecordKind.TRADES] = batch
        batch = quotes.ticker_batch(tickers, out, window=self.window, instruments=self.instruments)
        if batch is not None:
            out.records[RecordKind.QUOTES] = batch
        return out

    def _route(self, frame: RawFrame, out: ParsedBatch) -> str | None:
        """The subscribed data channel a frame belongs to; None when it was rejected or a control reply."""
        head = decode_or_reject(wire.head_decoder, frame.payload, frame, out, not_an_object)
        if head is None:
            return None
        kind = head.type
        if kind is None:
            return _reject(out, frame, RejectReason.MISSING_FIELD, "no message `type`")
        if not isinstance(kind, str):
            return _reject(out, frame, RejectReason.WRONG_TYPE, f"`type` is not a string: {brief(kind)}")
        if kind == "subscriptions":
            out.control += 1
            return None
        if kind == "error":
            detail = f"venue error: {brief(head.message)}: {brief(head.reason)}"
            return _reject(out, frame, RejectReason.VENUE_ERROR, detail)
        channel = CHANNEL_OF_TYPE.get(kind)
        if channel is None:
            return _reject(out, frame, RejectReason.UNKNOWN_EVENT, f"message type {brief(kind)}")
        if channel not in self.channels:
            return _reject(out, frame, RejectReason.UNSUBSCRIBED, f"channel {channel} ({kind}) is not subscribed")
        if head.product_id is None:
            return _reject(out, frame, RejectReason.MISSING_FIELD, f"{kind} without `product_id`")
        if not isinstance(head.product_id, str):
            return _reject(
                out, frame, RejectReason.WRONG_TYPE, f"`product_id` is not a string: {brief(head.product_id)}"
            )
        if head.product_id not in self._products:
            return _reject(out, frame, RejectReason.UNSUBSCRIBED, f"product {brief(head.product_id)} is not subscribed")
        if channel == HEARTBEAT:
            out.control += 1
            return None
        return channel

    def _decode_match(
        self, frame: RawFrame, fields: trades.TradeFields, extras: list[wire.Match], out: ParsedBatch
    ) -> None:
        m = decode_or_reject(wire.match_decoder, frame.payload, frame, out)
        if m is None:
            return
        time_us = parse_us(m.time)
        if time_us is None:
            _reject(out, frame, RejectReason.WRONG_TYPE, f"time {brief(m.time)} is not an RFC 3339 timestamp")
            return
        fields.add(frame, m.product_id, m.trade_id, time_us, m.time, m.price, m.size, m.side)
        extras.append(m)

    def _decode_ticker(self, frame: RawFrame, fields: quotes.TickerFields, out: ParsedBatch) -> None:
        t = decode_or_reject(wire.ticker_decoder, frame.payload, frame, out)
        if t is None:
            return
        time_us = None if t.time is None else parse_us(t.time)
        if t.time is not None and time_us is None:
            _reject(out, frame, RejectReason.WRONG_TYPE, f"time {brief(t.time)} is not an RFC 3339 timestamp")
            return
        fields.add(frame, t, time_us)

    def _trades(self, fields: trades.TradeFields, extras: list[wire.Match], out: ParsedBatch) -> pa.RecordBatch | None:
        sequences = [m.sequence for m in extras]
        checked = trades.check_trades(fields, out, window=self.window, ids={"sequence": sequences})
        if not checked.keep.any():
            return None
        kept = [extras[i] for i in checked.rows]
        n = len(kept)
        base, quote = trades.base_and_quote([m.product_id for m in kept], self.instruments)
        vendor = map_from_columns(
            _STREAM_VENDOR_KEYS,
            [
                pa.array([m.side for m in kept], pa.string()),
                pa.array([m.type for m in kept], pa.string()),
                pa.array([m.sequence for m in kept], pa.int64()).cast(pa.string()),
                pa.array([m.maker_order_id for m in kept], pa.string()),
                pa.array([m.taker_order_id for m in kept], pa.string()),
                base,
                quote,
            ],
            n,
        )
        return trades.trade_columns(fields, checked, instruments=self.instruments, vendor_data=vendor)


def _reject(out: ParsedBatch, frame: RawFrame, reason: RejectReason, detail: str) -> str | None:
    """Record a reject; returns None, so that ``return _reject(...)`` ends a branch."""
    out.rejected.append(Rejected(frame, reason, detail))
    return None
