"""Coinbase Exchange wire messages, field names as Coinbase sends them, and the limits K2 honours.

Public market-data feed ``wss://ws-feed.exchange.coinbase.com`` (no credentials); every message is a
JSON object with a ``type`` (https://docs.cdp.coinbase.com/exchange/websocket-feed/channels):

``match`` / ``last_match`` (channel ``matches``; one ``last_match`` per product right after subscribing)::

    =====================  ==============================  ==============  ===============================
    ``trade_id``           int, consecutive per product    ``side``        the MAKER order's side
    ``maker_order_id``     uuid text                       ``size``        decimal text
    ``taker_order_id``     uuid text                       ``price``       decimal text
    ``product_id``         ``BTC-USD``                     ``sequence``    int, the product's feed sequence
    ``time``               RFC 3339, microseconds          ``type``        ``match`` / ``last_match``
    =====================  ==============================  ==============  ===============================

    ``side`` is the side of the *maker* (resting) order ("The side of a trade indicates the maker
    order side", Exchange REST docs, get-product-trades): ``"sell"`` means a buyer lifted a resting
    sell order, so the aggressor (taker) BOUGHT. K2's ``side`` is the aggressor's: the opposite. The
    2021 recording agrees: each of its 107 ``ticker`` messages (whose ``side`` is the taker's) has the
    opposite side of the match with the same ``sequence``.

``ticker`` (channel ``ticker``; one per match, cascades may be batched): ``sequence``, ``product_id``,
``price`` (last trade), ``best_bid``, ``best_ask``, ``best_bid_size`` / ``best_ask_size`` (sent since
about 2022; absent in older messages), ``side`` (taker side of the last trade), ``time``,
``trade_id``, ``last_size``, 24 h / 30 d statistics.

``heartbeat`` (channel ``heartbeat``, per product once a second): ``sequence``, ``last_trade_id``
(observed always 0: liveness only), ``product_id``, ``time``. ``subscriptions``: the acknowledgement of
a (un)subscribe, listing every channel of the connection. ``error``: ``message`` and ``reason`` (e.g.
``"Failed to subscribe"``, ``"BTC-XXX is not a valid product"``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import msgspec

# Coinbase Exchange WebSocket limits (docs: exchange/websocket-feed/rate-limits, overview).
CONNECTS_PER_S = 8  # connection requests per second per IP (bursts up to 20)
CLIENT_MESSAGES_PER_S = 100  # messages a client sends, per second per IP
SUBSCRIPTIONS_PER_PRODUCT_CHANNEL = 10  # duplicates count; extra ones are refused
SUBSCRIBE_WITHIN_S = 5  # no subscribe within 5 s of connecting: disconnected
MAX_CONNECTION_AGE_S = math.inf  # Coinbase documents none (K2's source.max_connection_age_s applies)
# K2's own cap, not Coinbase's: one subscribe message per connection names every product (Coinbase
# documents no per-connection cap; a client message that is too big is refused).
MAX_PRODUCTS_PER_CONNECTION = 100

# Coinbase Exchange REST limits (docs: exchange/rest-api/rate-limits, pagination).
REST_REQUESTS_PER_S = 10  # public endpoints, per IP
REST_BURST = 15
MAX_TRADES_LIMIT = 1000  # ``limit`` of a page, at most

# Coinbase Exchange opened on 2015-01-26 UTC (later renamed GDAX, then Coinbase Pro): no trade is older.
LAUNCH_US = 1_422_230_400_000_000
# Trade ids and feed sequences are positive counters per product; a negative one is never real.
FIRST_ID = 0

MATCHES = "matches"
TICKER = "ticker"
HEARTBEAT = "heartbeat"

CHANNEL_OF_TYPE: dict[str, str] = {
    "match": MATCHES,
    "last_match": MATCHES,
    "ticker": TICKER,
    "heartbeat": HEARTBEAT,
    "snapshot": "level2",
    "l2update": "level2",
    "received": "full",
    "open": "full",
    "done": "full",
    "change": "full",
    "activate": "full",
    "status": "status",
    "auction": "auction",
}
"""Message type -> the channel that sends it (a type of a channel K2 did not subscribe is ``unsubscribed``)."""

Side = Literal["buy", "sell"]


class Match(msgspec.Struct, frozen=True):
    """A ``match`` or ``last_match`` message."""

    type: str
    trade_id: int
    maker_order_id: str
    taker_order_id: str
    side: Side
    size: str
    price: str
    product_id: str
    sequence: int
    time: str


class Ticker(msgspec.Struct, frozen=True):
    """A ``ticker`` message (fields beyond the best bid/ask are kept in ``vendor_data``)."""

    type: str
    sequence: int
    product_id: str
    best_bid: str
    best_ask: str
    best_bid_size: str | None = None
    best_ask_size: str | None = None
    time: str | None = None
    price: str | None = None
    side: Side | None = None
    trade_id: int | None = None
    last_size: str | None = None
    open_24h: str | None = None
    volume_24h: str | None = None
    low_24h: str | None = None
    high_24h: str | None = None
    volume_30d: str | None = None


class Head(msgspec.Struct):
    """Just enough of any frame to route it; ``Any`` so that a wrong type is reported by name."""

    type: Any = None
    product_id: Any = None
    message: Any = None
    reason: Any = None


class RestTrade(msgspec.Struct, frozen=True):
    """One element of ``GET /products/{product_id}/trades`` (newest first)."""

    time: str
    trade_id: int
    price: str
    size: str
    side: Side


head_decoder = msgspec.json.Decoder(Head)
match_decoder = msgspec.json.Decoder(Match)
ticker_decoder = msgspec.json.Decoder(Ticker)
