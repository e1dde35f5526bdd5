"""BinanceParser: Binance spot frames for one subscription, routed on the stream name to a kind's parser.

K2 connects to the combined stream (``/stream?streams=btcusdt@trade/btcusdt@bookTicker``), so every
data frame names its stream: ``<symbol>@trade`` goes to the trade columns
(:mod:`k2.sources.binance.trades`), ``<symbol>@bookTicker`` to the quote columns
(:mod:`k2.sources.binance.book_ticker`). A stream outside the subscription, or a ``data.s`` that
contradicts the stream's symbol, is quarantined (``unsubscribed``). A raw event without the
envelope (``/ws/<stream>``) is routed on its event type, which only trades carry. Subscription
replies (``{"result": null, "id": 1}``) count as control. Every frame ends up as one row, one reject
or one control reply: nothing in a frame can make :meth:`BinanceParser.parse` raise.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union, cast

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from k2.config import ValidationSettings
from k2.errors import ConfigError
from k2.schema.kinds import RecordKind
from k2.sources.base import ParsedBatch, RawFrame, Rejected, RejectReason, subscription
from k2.sources.binance import book_ticker, trades, wire
from k2.sources.binance.wire import BOOK_TICKER_STREAM, LAUNCH_US, MAX_STREAMS_PER_CONNECTION, TRADE_STREAM
from k2.sources.columns import brief, map_from_columns
from k2.sources.symbols import Instrument
from k2.sources.validation import time_windows
from k2.sources.venue import SymbolRules

_Routed = tuple[RecordKind, bytes | msgspec.Raw, str | None]  # kind, body, the symbol the body must carry

STREAMS: Mapping[RecordKind, str] = {RecordKind.TRADES: TRADE_STREAM, RecordKind.QUOTES: BOOK_TICKER_STREAM}
_KIND_OF = {suffix: kind for kind, suffix in STREAMS.items()}

_STREAM_VENDOR_KEYS = (
    "is_buyer_maker",
    "event_type",
    "event_time",
    "trade_time",
    "base_asset",
    "quote_asset",
    "is_best_match",
    "buyer_order_id",
    "seller_order_id",
)


class BinanceParser:
    """Binance spot trades and best bid/offer for ``symbols`` x ``kinds``. Pure."""

    def __init__(
        self,
        symbols: Sequence[str],
        kinds: Sequence[RecordKind] = (RecordKind.TRADES,),
        *,
        rules: SymbolRules,
        validation: ValidationSettings | None = None,
        is_sample_data: bool = False,
        time_unit: str = "MILLISECOND",
    ) -> None:
        self.symbols, self.kinds = subscription("binance", (s.upper() for s in symbols), kinds, STREAMS)
        if time_unit not in ("MILLISECOND", "MICROSECOND"):
            raise ConfigError(f"time_unit must be MILLISECOND or MICROSECOND, not {time_unit!r}")
        self.time_unit = time_unit
        self._unit_us = 1000 if time_unit == "MILLISECOND" else 1
        self.instruments: dict[str, Instrument] = {s: rules.instrument(s) for s in self.symbols}
        # Combined-stream name -> (kind, the symbol its frames must carry); raw events are matched by symbol.
        self._streams = {f"{s.lower()}@{STREAMS[k]}": (k, s) for s in self.symbols for k in self.kinds}
        self._raw_trade_symbols = frozenset(self.symbols) if RecordKind.TRADES in self.kinds else frozenset()
        live, replay = time_windows(LAUNCH_US, validation or ValidationSettings())
        self.window = replay if is_sample_data else live

    # --- connection -------------------------------------------------------------------------------
    def stream_names(self) -> list[str]:
        """The subscription as Binance stream names (``btcusdt@trade``, ``btcusdt@bookTicker``)."""
        return list(self._streams)

    def stream_urls(self, base_url: str) -> list[str]:
        """Combined-stream URLs, at most 1024 streams per connection (Binance's limit)."""
        names = self.stream_names()
        query = "&timeUnit=MICROSECOND" if self.time_unit == "MICROSECOND" else ""
        base = base_url.rstrip("/")
        return [
            f"{base}/stream?streams={'/'.join(names[i : i + MAX_STREAMS_PER_CONNECTION])}{query}"
            for i in range(0, len(names), MAX_STREAMS_PER_CONNECTION)
        ]

    def subscribe_messages(self) -> list[str]:
        return []  # the combined-stream URL subscribes

    # --- parsing ----------------------------------------------------------------------------------
    def parse(self, frames: Sequence[RawFrame]) -> ParsedBatch:
        clean = self._parse_clean(frames)
        if clean is not None:
            return clean
        return self._parse_each(frames)

    def _parse_clean(self, frames: Sequence[RawFrame]) -> ParsedBatch | None:
        """The common case in one pass: every frame a subscribed stream's envelope whose body is that
        stream's message for its symbol. Each frame is decoded once, straight into its stream's typed
        envelope (:func:`_stream_decoder`: a union tagged by the stream name). None as soon as any
        frame is anything else: :meth:`_parse_each` then parses the batch frame by frame, with a
        reject or a control count where one is due. Both give the same rows and rejects for a clean
        batch (the range and number checks after decoding are shared)."""
        decode, stream_of = _stream_decoder(tuple(self._streams))
        try:
            envelopes = [decode(frame.payload) for frame in frames]
        except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
            return None
        routes = self._streams
        found = [routes.get(stream_of[type(env)]) for env in envelopes]  # type: ignore[arg-type]
        if None in found:  # the decoder's sentinel: a frame naming no subscribed stream
            return None
        routed = cast(list[tuple[RecordKind, str]], found)
        bodies: dict[RecordKind, list[Any]] = {}
        owners: dict[RecordKind, list[RawFrame]] = {}
        expected: dict[RecordKind, list[str]] = {}
        if len(self.kinds) == 1:
            bodies[self.kinds[0]] = [env.data for env in envelopes]
            owners[self.kinds[0]] = list(frames)
            expected[self.kinds[0]] = [route[1] for route in routed]
        else:
            for kind in {route[0] for route in routed}:
                picked = [i for i, route in enumerate(routed) if route[0] is kind]
                bodies[kind] = [envelopes[i].data for i in picked]
                owners[kind] = [frames[i] for i in picked]
                expected[kind] = [routed[i][1] for i in picked]
        trade_list: list[wire.Trade] = bodies.get(RecordKind.TRADES, [])
        tickers: list[wire.BookTicker] = bodies.get(RecordKind.QUOTES, [])
        if [t.s for t in trade_list] != expected.get(RecordKind.TRADES, []):  # also: one body, one trade
            return None
        if [t.e for t in trade_list].count("trade") != len(trade_list):
            return None
        if [t.s for t in tickers] != expected.get(RecordKind.QUOTES, []):
            return None
        out = ParsedBatch()
        if trade_list:
            batch = self._trades(trades.TradeFields.of(trade_list, owners[RecordKind.TRADES]), out)
            if batch is not None:
                out.records[RecordKind.TRADES] = batch
        quotes = book_ticker.book_ticker_batch(tickers, owners.get(RecordKind.QUOTES, []), out, self.instruments)
        if quotes is not None:
            out.records[RecordKind.QUOTES] = quotes
        return out

    def _parse_each(self, frames: Sequence[RawFrame]) -> ParsedBatch:
        """Frame by frame: every frame is routed and decoded on its own, rejects with their reason."""
        out = ParsedBatch()
        fields = trades.TradeFields()
        tickers: list[wire.BookTicker] = []
        ticker_frames: list[RawFrame] = []
        for frame in frames:
            routed = self._route(frame, out)
            if routed is None:
                continue
            kind, body, symbol = routed
            if kind is RecordKind.TRADES:
                self._decode_trade(frame, body, symbol, fields, out)
            else:
                self._decode_book_ticker(frame, body, symbol, tickers, ticker_frames, out)
        if len(fields):
            batch = self._trades(fields, out)
            if batch is not None:
                out.records[RecordKind.TRADES] = batch
        quotes = book_ticker.book_ticker_batch(tickers, ticker_frames, out, self.instruments)
        if quotes is not None:
            out.records[RecordKind.QUOTES] = quotes
        return out

    def _route(self, frame: RawFrame, out: ParsedBatch) -> _Routed | None:
        """(kind, body, symbol the body must carry) of one frame; None when it was rejected or was a
        control reply (``out`` says which)."""
        try:
            env = wire.envelope_decoder.decode(frame.payload)
        except msgspec.ValidationError as exc:
            return _reject(out, frame, RejectReason.WRONG_TYPE, f"not a JSON object: {exc}")
        except (msgspec.DecodeError, RecursionError) as exc:  # msgspec's depth limit is a RecursionError
            return _reject(out, frame, RejectReason.MALFORMED_JSON, str(exc))
        stream, data = env.stream, env.data
        if stream is not None or len(data):  # a combined-stream envelope
            if not isinstance(stream, str):
                reason = RejectReason.MISSING_FIELD if stream is None else RejectReason.WRONG_TYPE
                return _reject(out, frame, reason, f"`data` needs a string `stream`, got {brief(stream)}")
            if not len(data):
                return _reject(out, frame, RejectReason.MISSING_FIELD, f"stream {brief(stream)} without `data`")
            routed = self._streams.get(stream)
            if routed is None:
                return _reject(out, frame, RejectReason.UNSUBSCRIBED, f"stream {brief(stream)} is not subscribed")
            return routed[0], data, routed[1]
        if env.e is not None:  # a raw event, as /ws/<stream> sends it: only trades carry an event type
            return RecordKind.TRADES, frame.payload, None
        if env.id is not None:  # reply to SUBSCRIBE / LIST_SUBSCRIPTIONS
            out.control += 1
            return None
        return _reject(out, frame, RejectReason.MISSING_FIELD, "no stream, no event type `e` and no `data`")

    def _decode_trade(
        self, frame: RawFrame, body: bytes | msgspec.Raw, symbol: str | None, fields: trades.TradeFields,
        out: ParsedBatch,
    ) -> None:  # fmt: skip
        try:
            t = wire.trade_decoder.decode(body)
        except msgspec.ValidationError as exc:
            _reject(out, frame, *_why_not_a_trade(body, exc))
            return
        except (msgspec.DecodeError, RecursionError) as exc:
            _reject(out, frame, RejectReason.MALFORMED_JSON, str(exc))
            return
        if t.e != "trade":
            _reject(out, frame, RejectReason.UNKNOWN_EVENT, f"event type {brief(t.e)}")
            return
        if symbol is None and t.s not in self._raw_trade_symbols:
            _reject(out, frame, RejectReason.UNSUBSCRIBED, f"symbol {brief(t.s)} is not subscribed")
            return
        if symbol is not None and t.s != symbol:
            _reject(out, frame, RejectReason.UNSUBSCRIBED, f"symbol {brief(t.s)} on the stream of {symbol}")
            return
        fields.add(frame, t.s, t.t, t.T, t.E, t.p, t.q, t.m, t.M, t.b, t.a)

    def _decode_book_ticker(
        self, frame: RawFrame, body: bytes | msgspec.Raw, symbol: str | None, tickers: list[wire.BookTicker],
        frames: list[RawFrame], out: ParsedBatch,
    ) -> None:  # fmt: skip
        try:
            ticker = wire.book_ticker_decoder.decode(body)
        except msgspec.ValidationError as exc:
            reason = RejectReason.MISSING_FIELD if "missing required field" in str(exc) else RejectReason.WRONG_TYPE
            _reject(out, frame, reason, str(exc))
            return
        except (msgspec.DecodeError, RecursionError) as exc:
            _reject(out, frame, RejectReason.MALFORMED_JSON, str(exc))
            return
        if ticker.s != symbol:
            _reject(out, frame, RejectReason.UNSUBSCRIBED, f"symbol {brief(ticker.s)} on the stream of {symbol}")
            return
        tickers.append(ticker)
        frames.append(frame)

    def _trades(self, fields: trades.TradeFields, out: ParsedBatch) -> pa.RecordBatch | None:
        checked = trades.check_trades(fields, out, window=self.window, unit_us=self._unit_us)
        if not checked.keep.any():
            return None
        if not checked.keep.all():
            fields = fields.filtered(checked.keep.tolist())
            checked = checked.kept()
        n = len(fields)
        symbols = fields.symbols
        maker = pa.array(fields.buyer_is_maker, pa.bool_())
        best = pa.array(fields.best_match, pa.bool_())  # null when absent: left out of the map
        symbol_arr = pa.array(symbols, pa.string())
        base, quote = trades.base_and_quote(symbol_arr, self.instruments)
        vendor: list[pa.Array] = [
            pc.if_else(maker, "true", "false"),
            pa.repeat("trade", n),
            pa.array(checked.event_time).cast(pa.string()),
            pa.array(checked.trade_time).cast(pa.string()),
            base,
            quote,
            pc.if_else(best, "true", "false"),
        ]
        if checked.has_order_ids:
            vendor.append(pa.array(fields.buyer_order_ids, pa.int64()).cast(pa.string()))
            vendor.append(pa.array(fields.seller_order_ids, pa.int64()).cast(pa.string()))
        vendor_data = map_from_columns(_STREAM_VENDOR_KEYS[: len(vendor)], vendor, n)
        return trades.trade_columns(
            symbols, maker, checked, instruments=self.instruments, unit_us=self._unit_us, vendor_data=vendor_data
        )


_BODY: Mapping[RecordKind, type] = {RecordKind.TRADES: wire.Trade, RecordKind.QUOTES: wire.BookTicker}


@functools.lru_cache(maxsize=64)
def _stream_decoder(streams: tuple[str, ...]) -> tuple[Callable[[bytes], Any], dict[type, str | None]]:
    """A decoder of a combined-stream frame of one of ``streams`` into an envelope whose ``data`` is
    typed by the stream's kind (a msgspec union of one struct per stream, tagged by the ``stream``
    field), and each envelope type's stream name. Any other frame (another stream, no envelope, a body
    of the wrong shape) is a DecodeError. Built once per subscription and process (a decoder cannot be
    pickled into a parse process)."""
    members: dict[type, str | None] = {
        msgspec.defstruct(
            f"_Envelope{i}", [("data", _BODY[_KIND_OF[name.rsplit("@", 1)[1]]])], tag_field="stream", tag=name,
            frozen=True, gc=False,  # holds one message of scalars: no cycle, so never tracked (collections stay short)
        ): name
        for i, name in enumerate(streams)
    }  # fmt: skip
    # A union of one struct would take a frame without ``stream`` for that struct (msgspec only requires the
    # tag to tell members apart): a sentinel member keeps the tag required. It routes nowhere (None).
    members[msgspec.defstruct("_NoStream", [], tag_field="stream", tag="\x00k2:none", frozen=True, gc=False)] = None
    decoder = msgspec.json.Decoder(Union[tuple(members)])  # noqa: UP007
    return decoder.decode, members


def _reject(out: ParsedBatch, frame: RawFrame, reason: RejectReason, detail: str) -> _Routed | None:
    """Record a reject; returns None, so that ``return _reject(...)`` ends a branch."""
    out.rejected.append(Rejected(frame, reason, detail))
    return None


def _why_not_a_trade(body: bytes | msgspec.Raw, error: msgspec.ValidationError) -> tuple[RejectReason, str]:
    """The reason a body that is JSON failed to decode as a trade: not an object, no or another event
    type (which says nothing about its other fields), or a missing/mistyped trade field."""
    try:
        head = wire.head_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        return RejectReason.WRONG_TYPE, f"`data` is not an object: {exc}"
    if head.e is None:
        return RejectReason.MISSING_FIELD, "no event type `e`"
    if not isinstance(head.e, str):
        return RejectReason.WRONG_TYPE, f"event type `e` is not a string: {brief(head.e)}"
    if head.e != "trade":
        return RejectReason.UNKNOWN_EVENT, f"event type {brief(head.e)}"
    if "missing required field" in str(error):
        return RejectReason.MISSING_FIELD, str(error)
    return RejectReason.WRONG_TYPE, str(error)
