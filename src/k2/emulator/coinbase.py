"""Coinbase Exchange's WebSocket feed as the emulator speaks it (:class:`CoinbaseProtocol`), the venue
entry's ``emulator`` (``k2.sources.coinbase.VENUE``).

* Handshake: the feed's root (``ws://host:port`` or ``/``); nothing is sent until the client
  subscribes. Other paths get HTTP 404.
* Control messages (:meth:`CoinbaseProtocol.control`): ``{"type": "subscribe" | "unsubscribe",
  "product_ids": [...], "channels": ["matches", {"name": "ticker", "product_ids": [...]}, ...]}``,
  both forms Coinbase documents. Each is answered with a ``subscriptions`` message listing every
  channel of the connection, as Coinbase does (``{"type":"subscriptions","product_ids":[],
  "channels":[]}`` when nothing is left). Bad requests get Coinbase's ``error`` reply:
  ``{"type":"error","message":"Failed to subscribe","reason":"No channels provided"}`` and
  ``"<id> is not a valid product"`` are its own wording (recorded replies); the reasons for a bad
  channel name or unreadable JSON are the emulator's.
* Streams are ``<channel>:<product>`` (``matches:SKL-USD``): a recorded ``match``/``last_match`` goes
  to ``matches``, ``ticker`` to ``ticker``, ``snapshot``/``l2update`` to ``level2``; recorded
  ``subscriptions`` acks are never replayed (the protocol answers the client's own subscribe).
* Heartbeats (:class:`k2.emulator.contract.Heartbeats`): once a second, for each ``heartbeat:<product>``
  a client holds, ``{"type":"heartbeat","sequence":...,"last_trade_id":...,"product_id":...,"time":...}``
  with the product's last sequence and trade id sent so far.
* Faults (:class:`k2.emulator.faults.FrameFaults`): ``match`` frames are trades and ``ticker`` frames
  quotes; bad frames are the real message with one field mutated (:func:`bad_frame`).
* REST on the same port: ``/products/{id}/trades`` (:class:`k2.emulator.coinbase_rest.CoinbaseRest`).

Not emulated: the ``last_match`` Coinbase sends again on every subscribe (a recording holds the one of
its own subscription), and the 10-subscriptions-per-product-and-channel cap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from k2.emulator.coinbase_rest import CoinbaseRest
from k2.emulator.contract import ControlAnswer
from k2.emulator.faults import CROSSED_QUOTE, FOREIGN_PREFIX, Faults, OutFrame
from k2.emulator.protocol import PathError
from k2.emulator.recording import BUNDLED_COINBASE_SESSION, RecordedFrame
from k2.schema.kinds import RecordKind
from k2.sources.coinbase.wire import CHANNEL_OF_TYPE, CLIENT_MESSAGES_PER_S, HEARTBEAT, MATCHES, TICKER
from k2.sources.timestamps import format_us, parse_us

CHANNELS = frozenset(
    {"heartbeat", "status", "auction", "matches", "rfq_matches", "ticker", "ticker_batch", "level2", "level2_batch",
     "full", "user"}
)  # fmt: skip
"""Channel names the Exchange feed documents (docs: exchange/websocket-feed/channels)."""

_TWO_63 = 2**63
_CENTURIES_US = 300 * 365 * 86_400_000_000
_YEAR_10000_US = 253_402_300_800_000_000
_ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
_encode = msgspec.json.Encoder().encode


class _Channel(msgspec.Struct):
    name: str
    product_ids: list[str] = []


class _Request(msgspec.Struct):
    type: str
    product_ids: list[str] = []
    channels: list[str | _Channel] = []


class _Head(msgspec.Struct):
    type: Any = None
    product_id: Any = None
    sequence: Any = None
    trade_id: Any = None


_request_decoder = msgspec.json.Decoder(_Request)
_head_decoder = msgspec.json.Decoder(_Head)


def error_reply(message: str, reason: str) -> bytes:
    return _encode({"type": "error", "message": message, "reason": reason})


def subscriptions_reply(streams: list[str]) -> bytes:
    """The ``subscriptions`` message listing ``streams`` (``channel:product``) by channel."""
    by_channel: dict[str, list[str]] = {}
    for stream in streams:
        channel, _, product = stream.partition(":")
        by_channel.setdefault(channel, []).append(product)
    if not by_channel:
        return _encode({"type": "subscriptions", "product_ids": [], "channels": []})
    channels = [{"name": c, "product_ids": p} for c, p in by_channel.items()]
    return _encode({"type": "subscriptions", "channels": channels})


def _valid_product(product: str) -> bool:
    base, sep, quote = product.partition("-")
    return bool(sep) and all((p.isascii() and p.isalnum() and p.isupper()) or p.isdigit() for p in (base, quote))


class CoinbaseProtocol:
    """Coinbase Exchange's feed (and backfill REST) protocol (:class:`k2.emulator.contract.EmulatorProtocol`)."""

    name = "coinbase"
    default_recording: Path = BUNDLED_COINBASE_SESSION
    heartbeat_interval_s = 1.0
    max_client_messages_per_s = CLIENT_MESSAGES_PER_S  # Coinbase's 100 a second (the server closes beyond)

    def __init__(self) -> None:
        self._last_sequence: dict[str, int] = {}
        self._last_trade_id: dict[str, int] = {}

    def open(self, target: str) -> tuple[str, list[str]]:
        if target.split("?", 1)[0] not in ("", "/"):
            raise PathError(404, "Not Found\n")
        return "json", []

    def control(self, subscribed: list[str], message: str | bytes) -> ControlAnswer:
        """Answer one subscribe / unsubscribe as Coinbase does: the new subscription list, or an error."""
        try:
            req = _request_decoder.decode(message)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return ControlAnswer(error_reply("Failed to subscribe", f"invalid (un)subscribe message: {exc}"))
        if req.type not in ("subscribe", "unsubscribe"):
            return ControlAnswer(error_reply("Failed to subscribe", f"unknown message type {req.type!r}"))
        failed = "Failed to subscribe" if req.type == "subscribe" else "Failed to unsubscribe"
        if not req.channels:
            return ControlAnswer(error_reply(failed, "No channels provided"))
        pairs: list[tuple[str, list[str]]] = []
        for entry in req.channels:
            name, products = (entry, req.product_ids) if isinstance(entry, str) else (entry.name, entry.product_ids)
            if name not in CHANNELS:
                return ControlAnswer(error_reply(failed, f"{name} is not a valid channel"))
            bad = next((p for p in products if not _valid_product(p)), None)
            if bad is not None:
                return ControlAnswer(error_reply(failed, f"{bad} is not a valid product"))
            pairs.append((name, products or req.product_ids))
        if req.type == "subscribe":
            if not any(products for _, products in pairs):
                return ControlAnswer(error_reply(failed, "No product ids provided"))
            added = tuple(dict.fromkeys(f"{c}:{p}" for c, products in pairs for p in products))
            after = list(dict.fromkeys([*subscribed, *added]))
            return ControlAnswer(subscriptions_reply(after), subscribe=added)
        removed = tuple(  # a channel named without products goes entirely
            s for s in subscribed for c, products in pairs if s.partition(":")[0] == c and
            (not products or s.partition(":")[2] in products)
        )  # fmt: skip
        after = [s for s in subscribed if s not in removed]
        return ControlAnswer(subscriptions_reply(after), unsubscribe=removed)

    def route(self, recorded: RecordedFrame) -> OutFrame:
        """The stream (``channel:product``) of a recorded message; None for acks, errors and garbage."""
        text = recorded.frame.encode()
        try:
            head = _head_decoder.decode(text)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return OutFrame(None, text, text, recorded.recv_us)
        channel = CHANNEL_OF_TYPE.get(head.type) if isinstance(head.type, str) else None
        if channel is None or not isinstance(head.product_id, str):
            return OutFrame(None, text, text, recorded.recv_us)
        return OutFrame(f"{channel}:{head.product_id}", text, text, recorded.recv_us)

    def payload(self, out: OutFrame, framing: str) -> bytes:
        """The message as recorded; the product's sequence and trade id are noted for its heartbeats."""
        if out.stream is not None and out.stream.startswith((MATCHES, TICKER)):
            try:
                head = _head_decoder.decode(out.raw)
            except (msgspec.DecodeError, msgspec.ValidationError):
                return out.raw
            product = out.stream.partition(":")[2]
            if isinstance(head.sequence, int):
                self._last_sequence[product] = max(head.sequence, self._last_sequence.get(product, 0))
            if isinstance(head.trade_id, int):
                self._last_trade_id[product] = max(head.trade_id, self._last_trade_id.get(product, 0))
        return out.raw

    def heartbeat(self, stream: str, now_us: int) -> bytes | None:
        channel, _, product = stream.partition(":")
        if channel != HEARTBEAT:
            return None
        return _encode(
            {"type": "heartbeat", "sequence": self._last_sequence.get(product, 0),
             "last_trade_id": self._last_trade_id.get(product, 0), "product_id": product, "time": format_us(now_us)}
        )  # fmt: skip

    # --- faults (k2.emulator.faults.FrameFaults) --------------------------------------------------
    def record_kind(self, out: OutFrame) -> RecordKind | None:
        channel = (out.stream or "").partition(":")[0]
        return RecordKind.TRADES if channel == MATCHES else RecordKind.QUOTES if channel == TICKER else None

    def bad_frame(self, source: OutFrame, kind: str) -> OutFrame:
        return bad_frame(source, kind)

    def rest(self, recording: Path, faults: Faults) -> CoinbaseRest:
        return CoinbaseRest(recording, faults)


def bad_frame(source: OutFrame, kind: str) -> OutFrame:
    """A frame of ``kind`` (a key of :data:`k2.emulator.faults.EXPECTED_REASON`) made from a real match
    (or, for ``crossed_quote``, a real ticker) by mutating one field; routed like ``source``."""
    assert source.stream is not None
    if kind == "malformed_json":  # cut in half: no longer JSON
        raw = source.raw[: len(source.raw) // 2]
        return OutFrame(source.stream, raw, raw, source.recv_us, kind)
    message: dict[str, Any] = msgspec.json.decode(source.raw)
    if kind == CROSSED_QUOTE:
        for bid, ask in (("best_bid", "best_ask"), ("best_bid_size", "best_ask_size")):
            if bid in message or ask in message:
                message[bid], message[ask] = message.get(ask), message.get(bid)
        raw = _encode(message)
    elif kind == "data_not_object":
        raw = _encode([message])
    else:
        _mutate(message, kind)
        raw = _encode(message)
    return OutFrame(source.stream, raw, raw, source.recv_us, kind)


def _digits(whole: str, n: int) -> str:
    digits = whole.lstrip("-0") or "1"
    return (digits * (n // len(digits) + 1))[:n]


def _mutate(match: dict[str, Any], kind: str) -> None:
    """Change one field of a match in place, as ``kind`` says (the Coinbase form of each Binance fault:
    ``trade_time_*`` set ``time`` to the RFC 3339 text of the same instant in microseconds)."""
    price = str(match.get("price"))
    whole, _, fraction = price.partition(".")
    time_us = parse_us(str(match.get("time"))) or 0
    trade_id = int(match.get("trade_id", 0))
    changes: dict[str, dict[str, Any]] = {
        "missing_field": {},
        "wrong_type": {"trade_id": str(trade_id)},
        "invalid_number": {"price": "not-a-number"},
        "non_positive": {"price": "-" + price},
        "unknown_event": {"type": "unknownEvent"},
        "event_not_string": {"type": [match.get("type")]},
        "price_space": {"price": " " + price},
        "price_underscore": {"price": price[:1] + "_" + price[1:]},
        "price_non_ascii_digits": {"price": price.translate(_ARABIC_INDIC)},
        "price_50_digits": {"price": _digits(whole, 50) + ("." + fraction if fraction else "")},
        "price_38_digits": {"price": "1" * 38},
        "trade_id_2_63": {"trade_id": _TWO_63},
        "trade_time_2_63": {"time": format_us(_TWO_63)},
        "trade_time_int64_max": {"time": format_us(_TWO_63 - 1)},
        "trade_time_zero": {"time": format_us(0)},
        "trade_time_negative": {"time": format_us(-time_us)},
        "trade_time_far_future": {"time": format_us(time_us + _CENTURIES_US)},
        "trade_time_after_9999": {"time": format_us(_YEAR_10000_US + time_us)},
        "trade_id_negative": {"trade_id": -trade_id},
        "unsubscribed_stream": {"product_id": FOREIGN_PREFIX + str(match.get("product_id"))},
        "stream_symbol_mismatch": {"product_id": FOREIGN_PREFIX + str(match.get("product_id"))},
    }
    if kind not in changes:
        raise ValueError(f"unknown bad-frame kind {kind!r}")
    if kind == "missing_field":
        match.pop("price", None)
    match.update(changes[kind])
