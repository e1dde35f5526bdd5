"""Coinbase Exchange: the venue entry (:data:`VENUE`) and its parts, one module each.

K2 uses the Exchange feed (``wss://ws-feed.exchange.coinbase.com``) rather than Advanced Trade because
only Exchange's public REST trades endpoint pages by trade id, so a gap in the consecutive trade ids
can be fetched exactly once (docs/venues.md, "Coinbase Exchange").

=============  ===========================================================================
``wire``       wire messages (msgspec structs, Coinbase's field names) and Coinbase's limits
``parser``     :class:`CoinbaseParser`: frames routed on ``type`` to a kind's columns
``trades``     match -> canonical trade columns and range checks (stream and REST)
``quotes``     ``ticker`` -> canonical quotes (best bid/ask)
``rest``       ``/products/{id}/trades`` cursors and the pure page parser
``backfill``   the REST trade fetcher (I/O)
``symbols``    symbol rules (``BTC-USD`` / ``BTC/USD``)
=============  ===========================================================================
"""

from __future__ import annotations

from k2.schema.kinds import RecordKind
from k2.sources.coinbase.parser import STREAMS, CoinbaseParser
from k2.sources.coinbase.symbols import CoinbaseSymbols
from k2.sources.coinbase.trades import ASSET_CLASS, EXCHANGE
from k2.sources.coinbase.wire import CLIENT_MESSAGES_PER_S, MAX_CONNECTION_AGE_S, MAX_PRODUCTS_PER_CONNECTION
from k2.sources.venue import ConnectionLimits, Venue

VENUE = Venue(
    name="coinbase",
    exchange=EXCHANGE,
    asset_class=ASSET_CLASS,
    ws_url="wss://ws-feed.exchange.coinbase.com",
    rest_url="https://api.exchange.coinbase.com",
    kinds=(RecordKind.TRADES, RecordKind.QUOTES),
    streams=STREAMS,
    limits=ConnectionLimits(
        # (channel, product) pairs one connection carries: K2's cap of products x matches, ticker, heartbeat
        max_streams_per_connection=3 * MAX_PRODUCTS_PER_CONNECTION,
        control_messages_per_s=CLIENT_MESSAGES_PER_S,
        max_connection_age_s=MAX_CONNECTION_AGE_S,
    ),
    parser=CoinbaseParser,
    symbol_rules=CoinbaseSymbols,
    backfill="k2.sources.coinbase.backfill:CoinbaseTradeFetcher",
    emulator="k2.emulator.coinbase:CoinbaseProtocol",
)

__all__ = ["EXCHANGE", "VENUE", "CoinbaseParser", "CoinbaseSymbols"]
