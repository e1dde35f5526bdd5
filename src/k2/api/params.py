"""Every query parameter of the API, declared once: names, patterns, OpenAPI descriptions, and the
:class:`Selection` (which rows: symbol, exchange, canonical instrument, time range) every market-data
route takes.

A route declares ``sel: Annotated[Selection, Depends(selection)]`` (or :func:`symbol_selection` when
the symbol or the instrument is required) instead of its own ``symbol``/``exchange``/``instrument``/
``start``/``end`` parameters, so a filter is added here, in :class:`Selection`, and where a plan is
made from it (:func:`k2.api.series.plan_of`), not in every route.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Annotated

from fastapi import Depends, Header, Query

from k2.api.formats import Format, NotAcceptable, negotiate
from k2.api.problems import Problem
from k2.errors import QueryError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,39}$"
"""Symbols and exchanges: letters, digits and ``. _ : / -`` (BTCUSDT, BTC-USD, XBT/USD), 1-40 chars."""
_NAME = re.compile(NAME_PATTERN)
INSTRUMENT_PATTERN = r"^[A-Za-z0-9]{1,20}/[A-Za-z0-9]{1,20}$"
"""Canonical instruments: BASE/QUOTE, letters and digits (BTC/USDT)."""

# Every width this pattern admits is between 1 ms and 366 days (what the engine accepts).
INTERVAL_PATTERN = (
    r"^(?:[1-9][0-9]{0,9}ms|[1-9][0-9]{0,6}s|[1-9][0-9]{0,4}m|[1-9][0-9]{0,2}h"
    r"|(?:[1-9][0-9]?|[12][0-9]{2}|3[0-5][0-9]|36[0-6])d)$"
)

OptSymbol = Annotated[str | None, Query(pattern=NAME_PATTERN, description="Exchange symbol, e.g. BTCUSDT.")]
OptExchange = Annotated[str | None, Query(pattern=NAME_PATTERN, description="Venue, e.g. BINANCE.")]
OptInstrument = Annotated[
    str | None,
    Query(
        pattern=INSTRUMENT_PATTERN,
        description="Canonical instrument BASE/QUOTE, e.g. BTC/USDT: every venue's symbol of it.",
    ),
]
StartParam = Annotated[
    datetime | None,
    Query(description="Inclusive start, RFC 3339 (UTC when no offset is given); quotes: of the receive time."),
]
EndParam = Annotated[
    datetime | None,
    Query(description="Exclusive end, RFC 3339 (UTC when no offset is given); quotes: of the receive time."),
]
FormatParam = Annotated[
    Format | None,
    Query(alias="format", description="Response format; overrides the Accept header (json, csv, arrow, parquet)."),
]
AcceptHeader = Annotated[str | None, Header(include_in_schema=False)]
IntervalParam = Annotated[
    str, Query(pattern=INTERVAL_PATTERN, description="Bucket width: 250ms, 1s, 1m, 5m, 1h, 1d...")
]
ToleranceParam = Annotated[
    str,
    Query(
        pattern=INTERVAL_PATTERN,
        description="How much older than the trade the prevailing quote may be (else null): 500ms, 10s, 1m...",
    ),
]
DayParam = Annotated[date | None, Query(description="A UTC day, YYYY-MM-DD.")]
CursorParam = Annotated[str | None, Query(max_length=1024, description="next_cursor of the previous page.")]


def check_name(value: str | None, what: str) -> str | None:
    """Upper-cased symbol/exchange, or QueryError (the routes validate the pattern first)."""
    if value is None:
        return None
    if not _NAME.match(value):
        raise QueryError(f"invalid {what}: letters, digits and . _ : / - only, 1-40 characters")
    return value.upper()


_MIN = datetime.min.replace(tzinfo=UTC)
_MAX = datetime.max.replace(tzinfo=UTC)


def utc(value: datetime | None) -> datetime | None:
    """An aware UTC datetime (naive means UTC); a time beyond what UTC can represent (year 1 with a
    positive offset, say) is clamped to the representable range rather than refused."""
    if value is None:
        return None
    aware = value if value.tzinfo is not None and value.utcoffset() is not None else value.replace(tzinfo=UTC)
    try:
        return aware.astimezone(UTC)
    except OverflowError:
        return _MIN if aware.year < 1970 else _MAX


@dataclass(frozen=True)
class Selection:
    """Which rows a market-data request is about: names upper-cased, times in UTC."""

    symbol: str | None
    exchange: str | None
    start: datetime | None
    end: datetime | None
    instrument: str | None = None  # canonical BASE/QUOTE: every venue's symbol of it

    @property
    def empty(self) -> bool:
        """True when the range holds nothing (``start >= end``): answered without a query."""
        return self.start is not None and self.end is not None and self.start >= self.end

    def from_start(self, start: datetime) -> Selection:
        return replace(self, start=start)


def check_instrument(value: str | None) -> str | None:
    """Upper-cased ``BASE/QUOTE``, or QueryError (the routes validate the pattern first)."""
    if value is None:
        return None
    if not re.match(INSTRUMENT_PATTERN, value):
        raise QueryError("invalid instrument: BASE/QUOTE, letters and digits (e.g. BTC/USDT)")
    return value.upper()


def selection(
    symbol: OptSymbol = None,
    exchange: OptExchange = None,
    start: StartParam = None,
    end: EndParam = None,
    instrument: OptInstrument = None,
) -> Selection:
    """A FastAPI dependency: the selection of a route whose symbol is optional."""
    return Selection(
        check_name(symbol, "symbol"),
        check_name(exchange, "exchange"),
        utc(start),
        utc(end),
        check_instrument(instrument),
    )


def symbol_selection(
    symbol: OptSymbol = None,
    exchange: OptExchange = None,
    start: StartParam = None,
    end: EndParam = None,
    instrument: OptInstrument = None,
) -> Selection:
    """A FastAPI dependency: the selection of a route about one symbol or one instrument (bars, VWAP);
    400 unless exactly one of them is given."""
    sel = selection(symbol, exchange, start, end, instrument)
    if (sel.symbol is None) == (sel.instrument is None):
        raise QueryError("give a symbol or an instrument (BASE/QUOTE), not both")
    return sel


def response_format(fmt: Format | None, accept: str | None) -> Format:
    """The negotiated format (see :func:`k2.api.formats.negotiate`); 406 when none can be produced."""
    try:
        return negotiate(fmt, accept)
    except NotAcceptable as exc:
        raise Problem(406, "not_acceptable", str(exc)) from exc


def negotiated(fmt: FormatParam = None, accept: AcceptHeader = None) -> Format:
    """A FastAPI dependency: the response format of a route answering rows."""
    return response_format(fmt, accept)


SelectionDep = Annotated[Selection, Depends(selection)]
SymbolSelectionDep = Annotated[Selection, Depends(symbol_selection)]
FormatDep = Annotated[Format, Depends(negotiated)]
