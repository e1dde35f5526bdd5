"""Binance spot: the venue entry (:data:`VENUE`) and its parts, one module each.

=================  ===========================================================================
``wire``           wire messages (msgspec structs, Binance's field names) and Binance's limits
``parser``         :class:`BinanceParser`: frames routed on the stream name to a kind's columns
``trades``         trade range checks and canonical trade columns (stream and REST)
``book_ticker``    ``@bookTicker`` -> canonical quotes
``rest``           ``historicalTrades`` endpoint, request weights, pure page parser
``backfill``       the REST trade fetcher (I/O)
``symbols``        symbol rules (``BTCUSDT`` / ``BTC/USDT``), exchangeInfo parser
``exchange_info``  exchangeInfo fetched and cached (I/O)
=================  ===========================================================================
"""

from __future__ import annotations

from k2.schema.kinds import RecordKind
from k2.sources.binance.parser import STREAMS, BinanceParser
from k2.sources.binance.symbols import BinanceSymbols
from k2.sources.binance.trades import ASSET_CLASS, EXCHANGE
from k2.sources.binance.wire import (
    MAX_CONNECTION_AGE_S,
    MAX_INCOMING_CONTROL_MESSAGES_PER_SECOND,
    MAX_STREAMS_PER_CONNECTION,
)
from k2.sources.venue import ConnectionLimits, Venue

VENUE = Venue(
    name="binance",
    exchange=EXCHANGE,
    asset_class=ASSET_CLASS,
    ws_url="wss://stream.binance.com:9443",
    rest_url="https://api.binance.com",
    kinds=(RecordKind.TRADES, RecordKind.QUOTES),
    streams=STREAMS,
    limits=ConnectionLimits(
        max_streams_per_connection=MAX_STREAMS_PER_CONNECTION,
        control_messages_per_s=MAX_INCOMING_CONTROL_MESSAGES_PER_SECOND,
        max_connection_age_s=MAX_CONNECTION_AGE_S,
    ),
    parser=BinanceParser,
    symbol_rules=BinanceSymbols,
    metadata="k2.sources.binance.exchange_info:load_symbol_metadata",
    backfill="k2.sources.binance.backfill:BinanceTradeFetcher",
    emulator="k2.emulator.binance:BinanceProtocol",
)

__all__ = ["EXCHANGE", "VENUE", "BinanceParser", "BinanceSymbols"]
