"""The canonical trade record, schema version 3. Declared once; every other form is derived.

Decimal precision/scale: Binance spot sends 8 decimals, Coinbase up to 10, Kraken up to 10;
``decimal(38, 12)`` keeps 12 fractional digits (every venue's strings fit exactly, a value with
more digits is rejected, never rounded) and 26 integer digits (far beyond any price or quantity).
See ``tests/unit/schema/test_decimal_range.py`` for the extreme real values that must round-trip.
"""

from __future__ import annotations

from enum import StrEnum

from k2.schema.model import (
    BooleanType,
    DecimalType,
    EnumType,
    Field,
    ListType,
    LongType,
    MapType,
    RecordSchema,
    StringType,
    TimestampType,
)

PRICE_PRECISION = 38
PRICE_SCALE = 12


class Side(StrEnum):
    """The aggressor's (taker's) side of a trade."""

    BUY = "BUY"
    SELL = "SELL"
    UNKNOWN = "UNKNOWN"


DECIMAL = DecimalType(PRICE_PRECISION, PRICE_SCALE)

TRADE_V2 = RecordSchema(
    name="Trade",
    namespace="k2.market_data",
    version=2,
    doc="One trade printed by an exchange, normalized to K2's canonical form (schema v2).",
    fields=(
        Field(1, "message_id", StringType(), "K2 id of this record: UUIDv5 of exchange:symbol:trade_id."),
        Field(2, "trade_id", StringType(), "The exchange's trade id, as text."),
        Field(3, "symbol", StringType(), "Exchange symbol, upper case (e.g. BTCUSDT)."),
        Field(4, "exchange", StringType(), "Venue name, upper case (e.g. BINANCE)."),
        Field(5, "asset_class", StringType(), "Asset class (crypto)."),
        Field(6, "timestamp", TimestampType(), "Exchange trade time, UTC, microseconds."),
        Field(7, "price", DECIMAL, "Trade price, exact."),
        Field(8, "quantity", DECIMAL, "Trade quantity in the base asset, exact."),
        Field(9, "currency", StringType(), "Currency of the price (the quote asset)."),
        Field(10, "side", EnumType("Side", tuple(s.value for s in Side)), "Aggressor side."),
        Field(
            11,
            "trade_conditions",
            ListType(17, StringType()),
            "Venue trade-condition codes (empty when the venue has none).",
        ),
        Field(12, "source_sequence", LongType(), "The venue's sequence number for this trade.", False),
        Field(13, "ingestion_timestamp", TimestampType(), "When K2 received the frame, UTC, microseconds."),
        Field(14, "platform_sequence", LongType(), "K2's monotonically increasing sequence per pipeline."),
        Field(
            15,
            "vendor_data",
            MapType(18, 19, StringType(), StringType()),
            "Venue-specific fields kept verbatim as text (e.g. is_buyer_maker, event_time).",
        ),
        Field(16, "is_sample_data", BooleanType(), "True for replayed/demo data, false for live data."),
    ),
)

TRADE_V3 = RecordSchema(
    name="Trade",
    namespace="k2.market_data",
    version=3,
    doc="One trade printed by an exchange, normalized to K2's canonical form (schema v3).",
    fields=(
        *TRADE_V2.fields,
        Field(
            20,
            "instrument",
            StringType(),
            "Canonical instrument BASE/QUOTE (e.g. BTC/USDT), from the venue's symbol rules. Added in v3: "
            "null in rows written before.",
            False,
        ),
    ),
)
"""Schema v3: v2 plus the canonical ``instrument`` (optional, id 20: the id Iceberg gives the column it
adds to a v2 table). BACKWARD compatible with v2: a v3 reader decodes v2 messages with a null
instrument (docs/kafka.md); a v2 table gains the column on start (:mod:`k2.schema.evolution`)."""

TRADE = TRADE_V3
"""The trade schema the pipeline writes today."""

TRADE_VERSIONS: tuple[RecordSchema, ...] = (TRADE_V2, TRADE_V3)
"""Every version, oldest first: tables are created from the first and evolved through the rest."""
