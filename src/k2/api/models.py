"""The API's typed shapes: every JSON body the service sends or accepts, and so its OpenAPI schema.

Prices, quantities, volumes and VWAPs are JSON strings holding the exact decimal (``"61000.010000000000"``),
never numbers: a JSON number is a binary float to most readers. Times are RFC 3339 in UTC with
microseconds (``"2024-08-08T23:54:15.342000Z"``).

Row models (:class:`Trade`, :class:`Bar`, ...) describe one element of a ``data`` list; table endpoints
stream those lists themselves (see :mod:`k2.api.formats`), so these models document rather than
build the JSON, and the Schemathesis test holds the two together.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DecimalText = Annotated[
    str,
    Field(
        pattern=r"^-?[0-9]+(\.[0-9]+)?$",
        description="An exact decimal as text (never a float).",
        examples=["61000.010000000000"],
    ),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors ---------------------------------------------------------------------------------------
class ErrorDetail(_Model):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_query, unauthorized, query_timeout.")
    message: str = Field(description="What went wrong, for a person; never a stack trace or a server path.")


class ErrorBody(_Model):
    error: ErrorDetail


# --- market data ----------------------------------------------------------------------------------
class Trade(_Model):
    """One canonical trade (the trades table's columns; see docs/sources.md)."""

    message_id: str
    trade_id: str
    symbol: str
    exchange: str
    asset_class: str
    timestamp: datetime = Field(description="Exchange trade time, UTC.")
    price: DecimalText
    quantity: DecimalText
    currency: str
    side: str
    trade_conditions: list[str]
    source_sequence: int | None
    ingestion_timestamp: datetime
    platform_sequence: int
    vendor_data: dict[str, str]
    is_sample_data: bool
    instrument: str | None = Field(
        description="Canonical instrument BASE/QUOTE (e.g. BTC/USDT); null in trades stored before trade schema v3."
    )


class TradePage(_Model):
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page (also in the K2-Next-Cursor header)."
    )
    data: list[Trade]


class Quote(_Model):
    """One canonical quote: a best bid/offer update (the quotes table's columns; see docs/sources.md)."""

    message_id: str
    symbol: str
    instrument: str = Field(description="Canonical instrument BASE/QUOTE, e.g. BTC/USDT.")
    exchange: str
    asset_class: str
    timestamp: datetime | None = Field(description="The venue's event time, UTC; null when the venue sends none.")
    bid_price: DecimalText
    bid_size: DecimalText | None = Field(description="Null when the venue sends no size (quote schema v2).")
    ask_price: DecimalText
    ask_size: DecimalText | None = Field(description="Null when the venue sends no size (quote schema v2).")
    currency: str
    source_sequence: int | None = Field(description="The venue's update id.")
    ingestion_timestamp: datetime = Field(description="When K2 received the quote, UTC (quotes are in its order).")
    platform_sequence: int
    vendor_data: dict[str, str]
    is_sample_data: bool


class QuotePage(_Model):
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page (also in the K2-Next-Cursor header)."
    )
    data: list[Quote]


class TradeWithQuote(Trade):
    """A trade and the quote prevailing when K2 received it: the last quote of its exchange and symbol
    received before the trade, at most `tolerance` older; null columns when none (or a backfilled trade)."""

    bid_price: DecimalText | None
    bid_size: DecimalText | None
    ask_price: DecimalText | None
    ask_size: DecimalText | None
    quote_sequence: int | None = Field(description="The prevailing quote's update id.")
    quote_received_at: datetime | None = Field(description="When K2 received the prevailing quote, UTC.")


class TradeWithQuotePage(_Model):
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page (also in the K2-Next-Cursor header)."
    )
    data: list[TradeWithQuote]


class Spread(_Model):
    """Spread statistics of one exchange and symbol over the quotes received in the range."""

    exchange: str
    symbol: str
    quotes: int
    first_received: datetime
    last_received: datetime
    min_spread: DecimalText = Field(description="Smallest ask - bid, exact.")
    max_spread: DecimalText = Field(description="Largest ask - bid, exact.")
    mean_spread: DecimalText = Field(description="Exact mean, rounded half-even to 12 places.")
    mean_mid: DecimalText
    mean_spread_bps: DecimalText = Field(description="mean_spread / mean_mid x 10,000.")


class SpreadList(_Model):
    data: list[Spread]


class Bbo(_Model):
    """Best bid and offer of one bucket of receive time (epoch-aligned): the last quote received in it,
    and the spread's exact min, max and mean over the bucket's quotes."""

    exchange: str
    symbol: str
    bucket: datetime = Field(description="Start of the bucket, UTC.")
    quotes: int
    bid_price: DecimalText
    bid_size: DecimalText | None
    ask_price: DecimalText
    ask_size: DecimalText | None
    min_spread: DecimalText
    max_spread: DecimalText
    mean_spread: DecimalText


class BboList(_Model):
    data: list[Bbo]


class Bar(_Model):
    exchange: str | None = Field(
        default=None, description="The venue: bars of an instrument come per venue, side by side (absent otherwise)."
    )
    bucket: datetime = Field(description="Start of the bar (epoch-aligned), UTC.")
    open: DecimalText
    high: DecimalText
    low: DecimalText
    close: DecimalText
    volume: DecimalText
    trades: int
    vwap: DecimalText | None = Field(description="Exact VWAP rounded half-even to 12 places; null if volume is 0.")


class BarList(_Model):
    data: list[Bar]


class Vwap(_Model):
    symbol: str | None
    instrument: str | None = Field(description="The canonical instrument asked for (all its venues), or null.")
    exchange: str | None
    start: datetime | None
    end: datetime | None
    vwap: DecimalText | None = Field(description="null when no trade matched.")


class Instrument(_Model):
    exchange: str
    symbol: str
    trades: int
    first_trade: datetime
    last_trade: datetime


class InstrumentList(_Model):
    data: list[Instrument]


# --- completeness ---------------------------------------------------------------------------------
class QualityRow(_Model):
    """Completeness and quality of one symbol on one UTC day (docs/quality.md, `k2 quality`)."""

    day: date
    exchange: str
    symbol: str
    trades: int = Field(description="Trades stored.")
    first_id: int | None
    last_id: int | None
    expected: int = Field(description="Ids from first to last: trades there should be.")
    missing: int = Field(description="expected - stored.")
    backfilled_trades: int
    gaps_found: int
    gaps_backfilled: int
    gaps_unrecoverable: int
    gaps_open: int
    duplicates_dropped: int
    out_of_order: int
    resets: int
    price_jump: int
    timestamp_future: int
    timestamp_lag: int
    stale_feed: int


class QualityList(_Model):
    data: list[QualityRow]


class Gap(_Model):
    """A sequence gap in its current state (OPEN, RESOLVED or UNRECOVERABLE)."""

    day: date
    exchange: str
    symbol: str
    event_id: str
    first_id: int
    last_id: int
    count: int
    status: Literal["OPEN", "RESOLVED", "UNRECOVERABLE"]
    recovered: int
    trade_time: datetime
    detected_at: datetime
    status_at: datetime
    detail: str


class GapList(_Model):
    data: list[Gap]


# --- SQL ------------------------------------------------------------------------------------------
Scalar = str | int | float | bool | None


class SqlRequest(_Model):
    query: str = Field(
        min_length=1,
        max_length=100_000,
        description="One read-only SELECT (DuckDB dialect) over the view `trades`; ? or $name placeholders.",
        examples=["SELECT symbol, count(*) AS n FROM trades GROUP BY symbol"],
    )
    params: list[Scalar] | dict[str, Scalar] | None = Field(
        default=None, description="Values for ? (a list) or $name (an object) placeholders; bound, never spliced."
    )


class SqlColumn(_Model):
    name: str
    type: str = Field(description="Arrow type of the column, e.g. decimal128(38, 12), timestamp[us, tz=UTC].")


class SqlResult(_Model):
    columns: list[SqlColumn]
    rows: list[list[Any]] = Field(description="One array per row, in column order; decimals as strings.")
    row_count: int
    truncated: bool = Field(description="True when the result was cut at the service's row cap (K2-Row-Cap).")


# --- operations -----------------------------------------------------------------------------------
class Health(_Model):
    status: Literal["ok"]


class Readiness(_Model):
    status: Literal["ready", "not_ready"]
    table: str
    snapshot_id: int | None
    detail: str


class Feed(_Model):
    """Freshness and rate of one feed (exchange, symbol, record kind), from the tables (what is queryable)."""

    exchange: str
    symbol: str
    kind: Literal["trades", "quotes"]
    last_event: datetime | None = Field(
        description="Newest event time stored: the venue's own, else (quotes without one) the receive time."
    )
    last_ingested: datetime | None = Field(description="Newest ingestion time stored.")
    freshness_s: float | None = Field(description="Seconds since last_ingested.")
    records_last_minute: int = Field(description="Records ingested in the last 60 s.")
    records_per_s: float


class VenueStatus(_Model):
    """One venue's live counters, from the metrics registry of the pipeline in this process."""

    venue: str
    connected: bool
    frames_per_s: float | None = Field(description="Over the last ~10 s; null until two samples exist.")
    records_per_s: float | None
    rejected_per_s: float | None
    last_event: dict[str, datetime] = Field(description="Newest exchange event time per configured symbol.")


class Feeds(_Model):
    now: datetime
    source: Literal["process", "table"] = Field(
        description="process: the service runs inside `k2 run` and reports its pipeline's metrics too."
    )
    feeds: list[Feed]
    venues: list[VenueStatus]
    last_commit: datetime | None = Field(description="Last commit to the trades table (process source only).")


class Dataset(_Model):
    name: str
    path: str


class Meta(_Model):
    """What this service offers; the dashboard reads it to show the panels that have data."""

    version: str
    auth: Literal["open", "keys"]
    datasets: list[Dataset]
    formats: list[str]
    max_rows: int
    query_timeout_s: float


class ApiKeyInfo(_Model):
    key_id: str
    name: str
    scopes: list[Literal["read", "sql", "admin"]]
    created_at: str
    revoked_at: str | None
    rate_limit: str | None


class ApiKeyList(_Model):
    data: list[ApiKeyInfo]
