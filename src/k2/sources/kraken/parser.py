"""KrakenParser: Kraken WebSocket v2 frames for one subscription, routed on the channel to a kind's parser.

Every frame names its channel: ``trade`` goes to the trade columns (:mod:`k2.sources.kraken.trades`),
``ticker`` to the quote columns (:mod:`k2.sources.kraken.ticker`). ``heartbeat``, ``status`` and replies
to requests (``{"method": "subscribe", "success": true, ...}``, ``{"method": "pong", ...}``) count as
control. A reply with ``success: false`` means part of the subscription is missing (an unknown pair, a
refused parameter): it is quarantined ``venue_error`` with Kraken's error text, so it is seen (as a
Coinbase ``error`` message is). A
channel K2 does not subscribe (``book``, ``ohlc``, ...) or a symbol outside the subscription is
quarantined ``unsubscribed``; an unknown channel or message type ``unknown_event``. A message is
stored whole or quarantined whole. Nothing in a frame can make :meth:`KrakenParser.parse` raise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

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
from k2.sources.columns import brief
from k2.sources.kraken import wire
from k2.sources.kraken.ticker import QuoteFields, quote_batch
from k2.sources.kraken.trades import TradeFields, trade_batch
from k2.sources.kraken.values import json_scalar_text
from k2.sources.kraken.wire import (
    HEARTBEAT_CHANNEL,
    LAUNCH_US,
    MAX_SYMBOLS_PER_CONNECTION,
    MESSAGE_TYPES,
    OTHER_CHANNELS,
    SIDES,
    STATUS_CHANNEL,
    TICKER_CHANNEL,
    TICKER_VENDOR_FIELDS,
    TRADE_CHANNEL,
    WS_PATH,
)
from k2.sources.symbols import Instrument
from k2.sources.timestamps import parse_us
from k2.sources.validation import time_windows
from k2.sources.venue import SymbolRules

STREAMS: Mapping[RecordKind, str] = {RecordKind.TRADES: TRADE_CHANNEL, RecordKind.QUOTES: TICKER_CHANNEL}
_KIND_OF = {channel: kind for kind, channel in STREAMS.items()}
TRADE_VENDOR_KEYS = ("ord_type", "type")

_Routed = tuple[RecordKind, str, msgspec.Raw]  # kind, message type, data


class KrakenParser:
    """Kraken spot trades and best bid/offer for ``symbols`` (v2 form, ``BTC/USD``) x ``kinds``. Pure."""

    def __init__(
        self,
        symbols: Sequence[str],
        kinds: Sequence[RecordKind] = (RecordKind.TRADES,),
        *,
        rules: SymbolRules,
        validation: ValidationSettings | None = None,
        is_sample_data: bool = False,
    ) -> None:
        self.symbols, self.kinds = subscription("kraken", symbols, kinds, STREAMS)
        if len(self.symbols) > MAX_SYMBOLS_PER_CONNECTION:
            raise ConfigError(f"kraken: at most {MAX_SYMBOLS_PER_CONNECTION} symbols on K2's one connection")
        self.instruments: dict[str, Instrument] = {s: rules.instrument(s) for s in self.symbols}
        live, history = time_windows(LAUNCH_US, validation or ValidationSettings())
        self.live = history if is_sample_data else live  # a replayed recording is old by design
        self.history = history

    # --- connection -------------------------------------------------------------------------------
    def stream_urls(self, base_url: str) -> list[str]:
        """One connection to ``<base>/v2`` (Kraken's WebSocket v2; the base alone is v1)."""
        base = base_url.rstrip("/")
        return [base if base.endswith(WS_PATH) else base + WS_PATH]

    def subscribe_messages(self) -> list[str]:
        """One ``subscribe`` per channel with every symbol: trades with their snapshot (the 50 most
        recent, which bridges a short reconnect), the ticker on every best bid/offer change."""
        symbols = list(self.symbols)
        out = []
        if RecordKind.TRADES in self.kinds:
            out.append(wire.subscribe_message(TRADE_CHANNEL, symbols, 1, snapshot=True))
        if RecordKind.QUOTES in self.kinds:
            out.append(wire.subscribe_message(TICKER_CHANNEL, symbols, 2, event_trigger="bbo", snapshot=True))
        return out

    # --- parsing ----------------------------------------------------------------------------------
    def parse(self, frames: Sequence[RawFrame]) -> ParsedBatch:
        out = ParsedBatch()
        trades = TradeFields(TRADE_VENDOR_KEYS)
        quotes = QuoteFields()
        for frame in frames:
            routed = self._route(frame, out)
            if routed is None:
                continue
            kind, message_type, data = routed
            if kind is RecordKind.TRADES:
                self._decode_trades(frame, message_type, data, trades, out)
            else:
                self._decode_tickers(frame, message_type, data, quotes, out)
        batch, _ = trade_batch(trades, out, live=self.live, history=self.history, instruments=self.instruments)
        if batch is not None:
            out.records[RecordKind.TRADES] = batch
        quoted = quote_batch(quotes, out, live=self.live, history=self.history, instruments=self.instruments)
        if quoted is not None:
            out.records[RecordKind.QUOTES] = quoted
        return out

    def _route(self, frame: RawFrame, out: ParsedBatch) -> _Routed | None:
        """(kind, message type, data) of a data frame; None when it was rejected or was control."""
        env = decode_or_reject(wire.envelope_decoder, frame.payload, frame, out, not_an_object)
        if env is None:
            return None
        if env.method is not None:  # a reply to a request
            if not isinstance(env.method, str) or not isinstance(env.success, bool | None):
                return _reject(out, frame, RejectReason.WRONG_TYPE, "`method` must be a string, `success` a bool")
            if env.success is False:
                detail = f"Kraken refused {brief(env.method)}: {brief(env.error)}"
                return _reject(out, frame, RejectReason.VENUE_ERROR, detail)
            out.control += 1
            return None
        channel = env.channel
        if channel is None:
            return _reject(out, frame, RejectReason.MISSING_FIELD, "neither `channel` nor `method`")
        if not isinstance(channel, str):
            return _reject(out, frame, RejectReason.WRONG_TYPE, f"`channel` is not a string: {brief(channel)}")
        if channel in (HEARTBEAT_CHANNEL, STATUS_CHANNEL):
            out.control += 1
            return None
        kind = _KIND_OF.get(channel)
        if kind is None or kind not in self.kinds:
            if kind is None and channel not in OTHER_CHANNELS:
                return _reject(out, frame, RejectReason.UNKNOWN_EVENT, f"channel {brief(channel)}")
            return _reject(out, frame, RejectReason.UNSUBSCRIBED, f"channel {brief(channel)} is not subscribed")
        message_type = env.type
        if message_type is None:
            return _reject(out, frame, RejectReason.MISSING_FIELD, f"{channel} message without `type`")
        if not isinstance(message_type, str):
            return _reject(out, frame, RejectReason.WRONG_TYPE, f"`type` is not a string: {brief(message_type)}")
        if message_type not in MESSAGE_TYPES:
            return _reject(out, frame, RejectReason.UNKNOWN_EVENT, f"{channel} message of type {brief(message_type)}")
        if not len(env.data):
            return _reject(out, frame, RejectReason.MISSING_FIELD, f"{channel} message without `data`")
        return kind, message_type, env.data

    def _decode_trades(
        self, frame: RawFrame, message_type: str, data: msgspec.Raw, fields: TradeFields, out: ParsedBatch
    ) -> None:
        elements = decode_or_reject(wire.trades_decoder, data, frame, out)
        if elements is None:
            return
        if not elements:  # a snapshot of a pair with no trades yet: nothing to store
            out.control += 1
            return
        group = fields.new_group(frame)
        history = message_type == "snapshot"
        for t in elements:
            price, qty = json_scalar_text(bytes(t.price)), json_scalar_text(bytes(t.qty))
            side = SIDES.get(t.side)
            time_us = parse_us(t.timestamp)
            problem = self._symbol_problem(t.symbol)
            if problem is None:
                problem = _type_problem(price, qty, side, t.side, time_us, t.timestamp)
            fields.add(group, t.symbol, t.trade_id, time_us or 0, price or "", qty or "", side or "", history,
                       (t.ord_type, message_type), problem)  # fmt: skip

    def _decode_tickers(
        self, frame: RawFrame, message_type: str, data: msgspec.Raw, fields: QuoteFields, out: ParsedBatch
    ) -> None:
        elements = decode_or_reject(wire.tickers_decoder, data, frame, out)
        if elements is None:
            return
        if not elements:
            out.control += 1
            return
        group = fields.new_group(frame)
        for t in elements:
            texts = [json_scalar_text(bytes(t.bid)), json_scalar_text(bytes(t.bid_qty)),
                     json_scalar_text(bytes(t.ask)), json_scalar_text(bytes(t.ask_qty))]  # fmt: skip
            time_us = None if t.timestamp is None else parse_us(t.timestamp)
            problem = self._symbol_problem(t.symbol)
            if problem is None and any(x is None for x in texts):
                problem = (RejectReason.WRONG_TYPE, "bid, bid_qty, ask and ask_qty must be numbers")
            if problem is None and t.timestamp is not None and time_us is None:
                problem = (RejectReason.WRONG_TYPE, f"timestamp {brief(t.timestamp)} is not RFC 3339 UTC")
            vendor = tuple(_vendor_text(bytes(getattr(t, name))) for name in TICKER_VENDOR_FIELDS)
            a, b, c, d = (x or "" for x in texts)
            fields.add(group, t.symbol, (a, b, c, d), time_us, message_type == "snapshot", (message_type, *vendor),
                       problem)  # fmt: skip

    def _symbol_problem(self, symbol: str) -> tuple[RejectReason, str] | None:
        if symbol in self.instruments:
            return None
        return RejectReason.UNSUBSCRIBED, f"symbol {brief(symbol)} is not subscribed"


def _type_problem(
    price: str | None, qty: str | None, side: str | None, raw_side: str, time_us: int | None, raw_time: str
) -> tuple[RejectReason, str] | None:
    if price is None or qty is None:
        return RejectReason.WRONG_TYPE, "price and qty must be numbers"
    if side is None:
        return RejectReason.WRONG_TYPE, f"side {brief(raw_side)} is neither buy nor sell"
    if time_us is None:
        return RejectReason.WRONG_TYPE, f"timestamp {brief(raw_time)} is not RFC 3339 UTC"
    return None


def _vendor_text(raw: bytes) -> str | None:
    """A ticker field kept in ``vendor_data``: its number text (a string's content), other JSON as written."""
    if not raw:
        return None
    text = json_scalar_text(raw)
    return text if text is not None else raw.decode("utf-8", "replace")


def _reject(out: ParsedBatch, frame: RawFrame, reason: RejectReason, detail: str) -> _Routed | None:
    """Record a reject; returns None, so that ``return _reject(...)`` ends a branch."""
    out.rejected.append(Rejected(frame, reason, detail))
    return None
