"""Canonical records, declared once, with derived Avro, Arrow and Iceberg forms."""

from k2.schema.arrow import to_arrow
from k2.schema.avro import to_avro
from k2.schema.iceberg import to_iceberg
from k2.schema.model import RecordSchema
from k2.schema.trade import PRICE_PRECISION, PRICE_SCALE, TRADE, TRADE_V2, TRADE_V3, Side

TRADE_ARROW_SCHEMA = to_arrow(TRADE)
"""The Arrow schema every trade batch in the pipeline has."""

__all__ = [
    "PRICE_PRECISION",
    "PRICE_SCALE",
    "TRADE",
    "TRADE_ARROW_SCHEMA",
    "TRADE_V2",
    "TRADE_V3",
    "RecordSchema",
    "Side",
    "to_arrow",
    "to_avro",
    "to_iceberg",
]
