"""Quote queries: the quotes themselves, spread statistics, and the trade-quote as-of join.

The SQL texts here follow :mod:`k2.query.sql`'s rule: constant fragments chosen by code, every
value (file lists, symbols, times) bound as a named parameter. The engine plans which files each
query reads; this module only says what DuckDB does with them and turns sums into exact decimals.

Time. Binance spot ``bookTicker`` carries no exchange time, so quotes are placed in time by when K2
received them (``ingestion_timestamp``), and the as-of join asks: *which quote had K2 received last,
when it received this trade?* Both stamps come from one clock, and a WebSocket session stamps its
frames strictly increasing (:class:`k2.sources.session.WebSocketSession`), so for a trade and quotes
of one symbol, which share a connection, the answer follows the wire order exactly. Trades fetched
later over REST (``vendor_data['backfilled'] = 'true'``) have no place in the live stream: they get
no quote (null), never a wrong one.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, localcontext

import pyarrow as pa

from k2.query.sql import parquet_source, quote_ident
from k2.schema import PRICE_PRECISION, PRICE_SCALE, to_arrow
from k2.schema.quote import QUOTE

QUOTE_ARROW_SCHEMA = to_arrow(QUOTE)
QUOTE_COLUMNS = ", ".join(quote_ident(f.name) for f in QUOTE_ARROW_SCHEMA)
QUOTES_SOURCE = parquet_source(QUOTE_ARROW_SCHEMA)

_PRICE = pa.decimal128(PRICE_PRECISION, PRICE_SCALE)
_UTC_US = pa.timestamp("us", tz="UTC")
_QUANTUM = Decimal(1).scaleb(-PRICE_SCALE)

SPREAD_SCHEMA = pa.schema(
    [
        pa.field("exchange", pa.string(), False),
        pa.field("symbol", pa.string(), False),
        pa.field("quotes", pa.int64(), False),
        pa.field("first_received", _UTC_US, False),
        pa.field("last_received", _UTC_US, False),
        pa.field("min_spread", _PRICE, False),
        pa.field("max_spread", _PRICE, False),
        pa.field("mean_spread", _PRICE, False),
        pa.field("mean_mid", _PRICE, False),
        pa.field("mean_spread_bps", _PRICE, False),
    ]
)
"""Per (exchange, symbol): the spread ``ask_price - bid_price`` over the quotes in range. Min and max
are exact; the means are exact sums divided and rounded half-even to 12 places; ``mean_spread_bps``
is ``mean_spread / mean_mid * 10,000``."""

AS_OF_COLUMNS = (
    pa.field("bid_price", _PRICE),
    pa.field("bid_size", _PRICE),
    pa.field("ask_price", _PRICE),
    pa.field("ask_size", _PRICE),
    pa.field("quote_sequence", pa.int64()),
    pa.field("quote_received_at", _UTC_US),
)
"""Columns the as-of join adds to each trade (null when no quote prevailed)."""

AS_OF_TRADES = "k2_asof_trades"  # the name the trades are registered under for the join


def quotes_sql(where: str) -> str:
    return (
        f"SELECT {QUOTE_COLUMNS} FROM {QUOTES_SOURCE} WHERE {where} "  # noqa: S608
        "ORDER BY ingestion_timestamp, source_sequence NULLS LAST, platform_sequence LIMIT $limit"
    )


def spread_sql(where: str) -> str:
    return (
        "SELECT exchange, symbol, count(*)::BIGINT AS quotes, "  # noqa: S608
        "min(ingestion_timestamp) AS first_received, max(ingestion_timestamp) AS last_received, "
        "min(ask_price - bid_price) AS min_spread, max(ask_price - bid_price) AS max_spread, "
        "sum(ask_price - bid_price) AS spread_sum, sum(ask_price + bid_price) AS mid2_sum "
        f"FROM {QUOTES_SOURCE} WHERE {where} GROUP BY exchange, symbol ORDER BY exchange, symbol"
    )


def as_of_sql(where: str) -> str:
    """Each registered trade with the last quote of its exchange and symbol received strictly
    before it, if that quote is at most ``$tolerance_us`` older; live trades only (``k2_live``).
    ``where`` filters the quote files (symbol, exchange and the receive-time window)."""
    quote_cols = "q.bid_price, q.bid_size, q.ask_price, q.ask_size, q.source_sequence, q.ingestion_timestamp"
    keep = "t.k2_live AND epoch_us(t.ingestion_timestamp) - epoch_us(q.ingestion_timestamp) <= $tolerance_us"
    picked = ", ".join(
        f"CASE WHEN {keep} THEN {source} END AS {f.name}"
        for source, f in zip(quote_cols.split(", "), AS_OF_COLUMNS, strict=True)
    )
    return (
        f"SELECT t.* EXCLUDE (k2_live), {picked} FROM {AS_OF_TRADES} t "  # noqa: S608
        "ASOF LEFT JOIN (SELECT exchange, symbol, ingestion_timestamp, bid_price, bid_size, ask_price, ask_size, "
        f"source_sequence FROM {QUOTES_SOURCE} WHERE {where}) q "
        "ON t.exchange = q.exchange AND t.symbol = q.symbol AND t.ingestion_timestamp > q.ingestion_timestamp "
        'ORDER BY t."timestamp", t.source_sequence NULLS LAST, t.platform_sequence'
    )


def spread_table(raw: pa.Table) -> pa.Table:
    """:data:`SPREAD_SCHEMA` rows from :func:`spread_sql`'s exact sums."""
    if raw.num_rows == 0:
        return SPREAD_SCHEMA.empty_table()
    counts = raw.column("quotes").to_pylist()
    spread_sums = raw.column("spread_sum").to_pylist()
    mid2_sums = raw.column("mid2_sum").to_pylist()
    with localcontext() as ctx:
        ctx.prec = 80  # exact for decimal(38, 12) sums of up to 2**63 rows, rounded once by _round
        mean_spread = [_round(Decimal(s) / n) for s, n in zip(spread_sums, counts, strict=True)]
        mean_mid = [_round(Decimal(m) / (2 * n)) for m, n in zip(mid2_sums, counts, strict=True)]
        bps = [_round(s / m * 10_000) if m else Decimal(0) for s, m in zip(mean_spread, mean_mid, strict=True)]
    columns = {
        "exchange": raw.column("exchange"),
        "symbol": raw.column("symbol"),
        "quotes": raw.column("quotes"),
        "first_received": raw.column("first_received").cast(_UTC_US),
        "last_received": raw.column("last_received").cast(_UTC_US),
        "min_spread": raw.column("min_spread").cast(_PRICE),
        "max_spread": raw.column("max_spread").cast(_PRICE),
        "mean_spread": pa.array(mean_spread, _PRICE),
        "mean_mid": pa.array(mean_mid, _PRICE),
        "mean_spread_bps": pa.array(bps, _PRICE),
    }
    return pa.table([columns[f.name] for f in SPREAD_SCHEMA], schema=SPREAD_SCHEMA)


def _round(value: Decimal) -> Decimal:
    return value.quantize(_QUANTUM, rounding=ROUND_HALF_EVEN)


# --- best bid and offer per time bucket -------------------------------------------------------------
BBO_SCHEMA = pa.schema(
    [
        pa.field("exchange", pa.string(), False),
        pa.field("symbol", pa.string(), False),
        pa.field("bucket", _UTC_US, False),
        pa.field("quotes", pa.int64(), False),
        pa.field("bid_price", _PRICE, False),
        pa.field("bid_size", _PRICE, False),
        pa.field("ask_price", _PRICE, False),
        pa.field("ask_size", _PRICE, False),
        pa.field("min_spread", _PRICE, False),
        pa.field("max_spread", _PRICE, False),
        pa.field("mean_spread", _PRICE, False),
    ]
)
"""Per exchange, symbol and epoch-aligned bucket of receive time: the quotes received, the best bid and
offer in force at the bucket's end (the last quote received in it, ties broken by update id, then
K2's sequence), and the spread's exact min/max and exact mean (half-even to 12 places). What a
spread chart draws: one point per bucket however many quotes the venue sent."""


def bbo_sql(where: str) -> str:
    """:data:`BBO_SCHEMA`'s rows as exact sums; binds ``$files``, ``$width`` and ``$origin`` (µs, a
    multiple of the width at or before every receive time, so the integer division floors)."""
    last = "{'bid_price': bid_price, 'bid_size': bid_size, 'ask_price': ask_price, 'ask_size': ask_size}"
    order = f"(ingestion_timestamp, coalesce(source_sequence, {2**63 - 1}), platform_sequence)"
    return (
        "SELECT exchange, symbol, bucket_us, quotes, last.bid_price AS bid_price, last.bid_size AS bid_size, "  # noqa: S608
        "last.ask_price AS ask_price, last.ask_size AS ask_size, min_spread, max_spread, spread_sum FROM ("
        "SELECT exchange, symbol, (epoch_us(ingestion_timestamp) - $origin) // $width * $width + $origin AS bucket_us, "
        f"count(*)::BIGINT AS quotes, arg_max({last}, {order}) AS last, "
        "min(ask_price - bid_price) AS min_spread, max(ask_price - bid_price) AS max_spread, "
        f"sum(ask_price - bid_price) AS spread_sum FROM {QUOTES_SOURCE} WHERE {where} GROUP BY ALL"
        ") ORDER BY bucket_us, exchange, symbol"
    )


def bbo_table(raw: pa.Table) -> pa.Table:
    """:data:`BBO_SCHEMA` rows from :func:`bbo_sql`'s result."""
    if raw.num_rows == 0:
        return BBO_SCHEMA.empty_table()
    counts = raw.column("quotes").to_pylist()
    with localcontext() as ctx:
        ctx.prec = 80
        means = [_round(Decimal(s) / n) for s, n in zip(raw.column("spread_sum").to_pylist(), counts, strict=True)]
    columns = {f.name: raw.column(f.name) for f in BBO_SCHEMA if f.name in raw.column_names}
    columns["bucket"] = raw.column("bucket_us").cast(pa.timestamp("us")).cast(_UTC_US)
    columns["mean_spread"] = pa.array(means, _PRICE)
    return pa.table([columns[f.name].cast(f.type) for f in BBO_SCHEMA], schema=BBO_SCHEMA)
