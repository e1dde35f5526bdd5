"""The canonical quote record (best bid and offer), schema version 2. Declared once; every other form is derived.

A quote is one top-of-book update as the venue published it: best bid price and size, best ask price
and size, exact decimals with the same ``decimal(38, 12)`` as trades. Times: ``ingestion_timestamp``
(when K2 received the frame) is always set; ``timestamp`` is the venue's own event time and is null
when the venue sends none (Binance spot ``bookTicker`` carries no time). ``source_sequence`` is the
venue's update id (Binance ``u``: increasing, not consecutive), so quotes have no id-gap tracking.

Version 2 makes ``bid_size`` and ``ask_size`` optional: a venue may publish the best prices without
the quantities resting there (Coinbase Exchange ``ticker`` messages carried no sizes until about
2022), and a size K2 was not sent is stored as null, never made up. BACKWARD compatible with v1
(docs/kafka.md): a v2 reader reads v1 data; an Iceberg table created with v1 has the two columns
relaxed to optional when a writer opens it, and a new table is created at v1 and relaxed in the same
commit (:func:`k2.lake.catalog.load_or_create_table`, :mod:`k2.schema.evolution`).

Field ids: top-level fields 1..16, then the nested ones (17, 18), the order in which Iceberg assigns
fresh ids when a table is created, so the table's ids are the declared ones.
"""

from __future__ import annotations

from k2.schema.model import BooleanType, Field, LongType, MapType, RecordSchema, StringType, TimestampType
from k2.schema.trade import DECIMAL

QUOTE_V1 = RecordSchema(
    name="Quote",
    namespace="k2.market_data",
    version=1,
    doc="One best bid/offer update published by an exchange, normalized to K2's canonical form (schema v1).",
    fields=(
        Field(1, "message_id", StringType(), "K2 id of this record: UUIDv5 of exchange:symbol:quote:update_id."),
        Field(2, "symbol", StringType(), "Exchange symbol as the venue writes it (e.g. BTCUSDT)."),
        Field(3, "instrument", StringType(), "Canonical instrument BASE/QUOTE (e.g. BTC/USDT)."),
        Field(4, "exchange", StringType(), "Venue name, upper case (e.g. BINANCE)."),
        Field(5, "asset_class", StringType(), "Asset class (crypto)."),
        Field(6, "timestamp", TimestampType(), "Venue event time, UTC, microseconds; null when not sent.", False),
        Field(7, "bid_price", DECIMAL, "Best bid price, exact."),
        Field(8, "bid_size", DECIMAL, "Quantity at the best bid (base asset), exact."),
        Field(9, "ask_price", DECIMAL, "Best ask price, exact."),
        Field(10, "ask_size", DECIMAL, "Quantity at the best ask (base asset), exact."),
        Field(11, "currency", StringType(), "Currency of the prices (the quote asset)."),
        Field(12, "source_sequence", LongType(), "The venue's update id for this quote.", False),
        Field(13, "ingestion_timestamp", TimestampType(), "When K2 received the frame, UTC, microseconds."),
        Field(14, "platform_sequence", LongType(), "K2's increasing sequence per venue feed."),
        Field(
            15,
            "vendor_data",
            MapType(17, 18, StringType(), StringType()),
            "Venue-specific fields kept verbatim as text.",
        ),
        Field(16, "is_sample_data", BooleanType(), "True for replayed/demo data, false for live data."),
    ),
)

QUOTE_V2 = RecordSchema(
    name="Quote",
    namespace="k2.market_data",
    version=2,
    doc="One best bid/offer update published by an exchange, normalized to K2's canonical form (schema v2).",
    fields=tuple(
        Field(f.id, f.name, f.type, f.doc.removesuffix(".") + "; null when the venue sends none.", False)
        if f.name in ("bid_size", "ask_size")
        else f
        for f in QUOTE_V1.fields
    ),
)
"""Schema v2: v1 with ``bid_size`` and ``ask_size`` optional (see the module docstring)."""

QUOTE = QUOTE_V2
"""The quote schema the pipeline writes today."""

QUOTE_VERSIONS: tuple[RecordSchema, ...] = (QUOTE_V1, QUOTE_V2)
"""Every version, oldest first: tables are created from the first and evolved through the rest
(:mod:`k2.schema.evolution`)."""
