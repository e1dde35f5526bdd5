"""Kraken WebSocket v2 wire messages, field names as Kraken sends them, and the limits K2 honours.

Public market data at ``wss://ws.kraken.com/v2`` (docs.kraken.com, "Spot Websockets (v2)"). After
connecting, K2 sends one ``subscribe`` per channel for all its symbols::

    {"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD"], "snapshot": true}, "req_id": 1}
    {"method": "subscribe", "params": {"channel": "ticker", "symbol": ["BTC/USD"], "event_trigger": "bbo",
                                       "snapshot": true}, "req_id": 2}

and receives, besides one ``status`` on connect, ``heartbeat`` about once a second when idle and one
``{"method": "subscribe", "result": {...}, "success": true, ...}`` acknowledgement per symbol:

``trade`` (``type`` ``snapshot`` then ``update``; several trades may share a message)::

    ``symbol`` (``BTC/USD``), ``side`` (the taker's: ``buy``/``sell``), ``price`` and ``qty`` (JSON
    numbers), ``ord_type`` (the taker's order type: ``market``/``limit``), ``trade_id`` (consecutive per
    symbol), ``timestamp`` (RFC 3339, microseconds)

``ticker`` with ``event_trigger: "bbo"`` (a message on every best bid/offer change)::

    ``symbol``, ``bid``, ``bid_qty``, ``ask``, ``ask_qty`` (JSON numbers), and ``last``, ``volume``,
    ``vwap``, ``low``, ``high``, ``change``, ``change_pct``; newer messages add ``timestamp``. There is
    no update id: K2 numbers quotes by receive time (docs/venues.md, "Kraken").

Prices and quantities are kept as raw JSON text (``msgspec.Raw``) and read by
:mod:`k2.sources.kraken.values`, never through a float.
"""

from __future__ import annotations

from typing import Any

import msgspec

WS_URL = "wss://ws.kraken.com"
WS_PATH = "/v2"  # wss://ws.kraken.com/ is WebSocket v1
REST_URL = "https://api.kraken.com"

# Kraken opened to the public on 2013-09-10 UTC: no trade or ticker time can be older (every window's floor).
LAUNCH_US = 1_378_771_200_000_000
# Kraken numbers each pair's trades from a positive sequence number: a negative trade id is never real.
FIRST_ID = 0

# Kraken documents no cap on symbols per subscription or per connection; a client library notes 200
# symbols per connection (unverified). K2 keeps one connection and refuses more symbols than this.
MAX_SYMBOLS_PER_CONNECTION = 200
# The WebSocket message rate is "dynamic" (error "Exceeded msg rate"); K2 sends two subscribe messages,
# spaced by the session's control-message interval.
MAX_CONTROL_MESSAGES_PER_SECOND = 4.0
# Kraken documents no maximum connection age; K2's session still renews at source.max_connection_age_s.
MAX_CONNECTION_AGE_S = 24 * 3600.0

TRADE_CHANNEL = "trade"
TICKER_CHANNEL = "ticker"
HEARTBEAT_CHANNEL = "heartbeat"
STATUS_CHANNEL = "status"
OTHER_CHANNELS = frozenset({"book", "ohlc", "instrument", "level3", "executions", "balances"})
"""Kraken channels K2 never subscribes to: a frame of one is quarantined ``unsubscribed``."""
MESSAGE_TYPES = frozenset({"snapshot", "update"})
SIDES = {"buy": "BUY", "sell": "SELL"}


class Envelope(msgspec.Struct):
    """Just enough of any frame to route it: a channel message, or a reply to a request (``method``).

    Fields are ``Any`` so that a field of the wrong type is reported by the router, by name."""

    channel: Any = None
    type: Any = None
    data: msgspec.Raw = msgspec.Raw(b"")
    method: Any = None
    success: Any = None
    error: Any = None


class Trade(msgspec.Struct, frozen=True):
    """One element of a ``trade`` message's ``data``."""

    symbol: str
    side: str
    price: msgspec.Raw
    qty: msgspec.Raw
    trade_id: int
    timestamp: str
    ord_type: str | None = None


class Ticker(msgspec.Struct, frozen=True):
    """One element of a ``ticker`` message's ``data`` (level 1)."""

    symbol: str
    bid: msgspec.Raw
    bid_qty: msgspec.Raw
    ask: msgspec.Raw
    ask_qty: msgspec.Raw
    last: msgspec.Raw = msgspec.Raw(b"")
    volume: msgspec.Raw = msgspec.Raw(b"")
    vwap: msgspec.Raw = msgspec.Raw(b"")
    low: msgspec.Raw = msgspec.Raw(b"")
    high: msgspec.Raw = msgspec.Raw(b"")
    change: msgspec.Raw = msgspec.Raw(b"")
    change_pct: msgspec.Raw = msgspec.Raw(b"")
    timestamp: str | None = None


TICKER_VENDOR_FIELDS = ("last", "volume", "vwap", "low", "high", "change", "change_pct")
"""Ticker fields with no canonical column, kept in ``vendor_data`` as their JSON text."""

envelope_decoder = msgspec.json.Decoder(Envelope)
trades_decoder = msgspec.json.Decoder(list[Trade])
tickers_decoder = msgspec.json.Decoder(list[Ticker])
elements_decoder = msgspec.json.Decoder(list[msgspec.Raw])


def subscribe_message(channel: str, symbols: list[str], req_id: int, **params: Any) -> str:
    """A v2 ``subscribe`` request for ``channel`` x ``symbols``."""
    body = {"method": "subscribe", "params": {"channel": channel, "symbol": symbols, **params}, "req_id": req_id}
    return msgspec.json.encode(body).decode()
