"""Binance spot wire messages, field names as Binance sends them, and the limits K2 honours.

Stream messages (https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams):

``<symbol>@trade``::

    =====  ===================================  =====  =====================================
    ``e``  event type ("trade")                 ``T``  trade time (ms, or µs with timeUnit)
    ``E``  event time                           ``m``  is the buyer the market maker?
    ``s``  symbol                               ``M``  ignore ("is best match", always true)
    ``t``  trade id (consecutive per symbol)    ``b``  buyer order id (older payloads only)
    ``p``  price (decimal string)               ``a``  seller order id (older payloads only)
    ``q``  quantity (decimal string)
    =====  ===================================  =====  =====================================

    ``m = true`` means the buyer was the maker, so the aggressor (taker) SOLD.

``<symbol>@bookTicker`` (best bid/offer; no event type, no time)::

    ``u`` order book update id (increasing, not consecutive), ``s`` symbol, ``b``/``B`` best bid
    price/quantity, ``a``/``A`` best ask price/quantity (decimal strings)

The combined stream (``/stream?streams=a/b``) wraps each as ``{"stream": "<name>", "data": {...}}``;
the stream name says what the message is, so K2 routes on it (a ``bookTicker`` has no ``e``).
"""

from __future__ import annotations

from typing import Any

import msgspec

# Binance limits (spot WebSocket streams documentation).
MAX_STREAMS_PER_CONNECTION = 1024
MAX_INCOMING_CONTROL_MESSAGES_PER_SECOND = 5
MAX_CONNECTION_AGE_S = 24 * 3600
# Binance opened on 2017-07-14 UTC: no trade or event time can be older (the lower bound of every window).
LAUNCH_US = 1_499_990_400_000_000
# Binance numbers each symbol's trades (and orders, and book updates) from 0: a negative id is never real.
FIRST_ID = 0

TRADE_STREAM = "trade"
BOOK_TICKER_STREAM = "bookTicker"


class Trade(msgspec.Struct, frozen=True):
    """A ``<symbol>@trade`` message."""

    e: str
    E: int
    s: str
    t: int
    p: str
    q: str
    T: int
    m: bool
    M: bool | None = None
    b: int | None = None
    a: int | None = None


class BookTicker(msgspec.Struct, frozen=True):
    """A ``<symbol>@bookTicker`` message."""

    u: int
    s: str
    b: str
    B: str
    a: str
    A: str


class Envelope(msgspec.Struct):
    """Just enough of any frame to route it: combined-stream wrapper, raw event, or a control reply.

    Fields are ``Any`` so that a field of the wrong type is reported by the router, by name."""

    stream: Any = None
    data: msgspec.Raw = msgspec.Raw(b"")
    e: Any = None
    id: Any = None
    result: Any = None


class Head(msgspec.Struct):
    e: Any = None


envelope_decoder = msgspec.json.Decoder(Envelope)
trade_decoder = msgspec.json.Decoder(Trade)
book_ticker_decoder = msgspec.json.Decoder(BookTicker)
head_decoder = msgspec.json.Decoder(Head)
