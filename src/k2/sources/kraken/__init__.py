"""Kraken spot (WebSocket v2): the venue entry (:data:`VENUE`) and its parts, one module each.

===============  ===============================================================================
``wire``         wire messages (msgspec structs, Kraken's field names), URLs and limits
``values``       numbers read from their JSON text (never a float), epoch-second times
``parser``       :class:`KrakenParser`: frames routed on the channel to a kind's columns
``trades``       trade checks and canonical trade columns (WebSocket and REST)
``ticker``       ``ticker`` (``event_trigger: "bbo"``) -> canonical quotes
``rest``         ``Trades`` endpoint, its errors and limits, pure page parser
``backfill``     the REST trade fetcher: pages found by time, checked by id (I/O)
``symbols``      symbol rules (``BTC/USD``, ``XBT/USD``, ``XBTUSD``, ``XXBTZUSD``), AssetPairs parser
``asset_pairs``  AssetPairs live (cached) or bundled (I/O)
===============  ===============================================================================
"""

from __future__ import annotations

from k2.schema.kinds import RecordKind
from k2.sources.kraken.asset_pairs import kraken_rules
from k2.sources.kraken.parser import STREAMS, KrakenParser
from k2.sources.kraken.symbols import KrakenSymbols
from k2.sources.kraken.trades import ASSET_CLASS, EXCHANGE
from k2.sources.kraken.wire import (
    MAX_CONNECTION_AGE_S,
    MAX_CONTROL_MESSAGES_PER_SECOND,
    MAX_SYMBOLS_PER_CONNECTION,
    REST_URL,
    WS_URL,
)
from k2.sources.venue import ConnectionLimits, Venue

VENUE = Venue(
    name="kraken",
    exchange=EXCHANGE,
    asset_class=ASSET_CLASS,
    ws_url=WS_URL,
    rest_url=REST_URL,
    kinds=(RecordKind.TRADES, RecordKind.QUOTES),
    streams=STREAMS,
    limits=ConnectionLimits(
        max_streams_per_connection=MAX_SYMBOLS_PER_CONNECTION * len(STREAMS),
        control_messages_per_s=MAX_CONTROL_MESSAGES_PER_SECOND,
        max_connection_age_s=MAX_CONNECTION_AGE_S,
    ),
    parser=KrakenParser,
    symbol_rules=kraken_rules,
    metadata="k2.sources.kraken.asset_pairs:load_symbol_metadata",
    backfill="k2.sources.kraken.backfill:KrakenTradeFetcher",
    emulator="k2.emulator.kraken:KrakenProtocol",
)

__all__ = ["EXCHANGE", "VENUE", "KrakenParser", "KrakenSymbols"]
