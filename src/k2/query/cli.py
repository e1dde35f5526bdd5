"""`k2 query ...`: trades, quotes, bars, VWAP, spreads, the as-of join and read-only SQL (DuckDB over Iceberg)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from k2.cliutil import FormatOpt, WarehouseOpt, errors, out, parse_time, print_arrow, settings_from
from k2.query.engine import QueryEngine

query_app = typer.Typer(
    help="Query K2's tables: trades, quotes, bars, VWAP, spreads, trades with their quotes, SQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


SymbolOpt = Annotated[str | None, typer.Option(help="The venue's symbol, e.g. BTCUSDT.")]
ExchangeOpt = Annotated[str | None, typer.Option(help="The exchange, e.g. BINANCE.")]
InstrumentOpt = Annotated[
    str | None, typer.Option(help="Canonical instrument BASE/QUOTE, e.g. BTC/USDT: every venue's symbol of it.")
]
StartOpt = Annotated[str | None, typer.Option(help="ISO-8601 start, inclusive (UTC if no offset).")]
EndOpt = Annotated[str | None, typer.Option(help="ISO-8601 end, exclusive.")]
LimitOpt = Annotated[int, typer.Option(help="At most this many rows.")]


_opened: list[QueryEngine] = []  # the running command's engines, closed when it ends (see _close_engines)


@query_app.callback()
def _close_engines(ctx: typer.Context) -> None:
    """Every `k2 query` command closes its engine, and so its catalog's connections, when it ends."""

    def close() -> None:
        while _opened:
            _opened.pop().close()

    ctx.call_on_close(close)


def _engine(warehouse: Path | None) -> QueryEngine:
    engine = QueryEngine.from_settings(settings_from(warehouse=warehouse))
    _opened.append(engine)
    return engine


@query_app.command("trades")
def query_trades(
    symbol: SymbolOpt = None,
    exchange: ExchangeOpt = None,
    instrument: InstrumentOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    limit: LimitOpt = 20,
    warehouse: WarehouseOpt = None,
    fmt: FormatOpt = "table",
) -> None:
    """Trades filtered by symbol or instrument, exchange and time range."""
    with errors():
        result = _engine(warehouse).query_trades(
            symbol=symbol,
            exchange=exchange,
            start_time=parse_time(start),
            end_time=parse_time(end),
            limit=limit,
            instrument=instrument,
        )
        columns = ["timestamp", "exchange", "symbol", "instrument", "trade_id", "side", "price", "quantity"]
        table = result.table if fmt != "table" else result.table.select(columns)
        print_arrow(table, fmt, title=f"trades ({result.num_rows} rows)")


@query_app.command("ohlcv")
def query_ohlcv(
    symbol: SymbolOpt = None,
    interval: Annotated[str, typer.Option(help="Bar width: 1s, 1m, 5m, 1h, 1d, ...")] = "1m",
    start: StartOpt = None,
    end: EndOpt = None,
    exchange: ExchangeOpt = None,
    instrument: InstrumentOpt = None,
    warehouse: WarehouseOpt = None,
    fmt: FormatOpt = "table",
) -> None:
    """OHLCV bars (exact decimals) at any interval, of a symbol or, per venue side by side, of an instrument."""
    with errors():
        result = _engine(warehouse).ohlcv(
            symbol, interval, start_time=parse_time(start), end_time=parse_time(end), exchange=exchange,
            instrument=instrument,
        )  # fmt: skip
        what = f"{instrument} per venue" if instrument else symbol
        print_arrow(result.table, fmt, title=f"{what} {interval} bars")


@query_app.command("vwap")
def query_vwap(
    symbol: SymbolOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    exchange: ExchangeOpt = None,
    instrument: InstrumentOpt = None,
    warehouse: WarehouseOpt = None,
) -> None:
    """Exact volume-weighted average price over a time range (of an instrument: over every venue's trades)."""
    with errors():
        value = _engine(warehouse).vwap(
            symbol, start_time=parse_time(start), end_time=parse_time(end), exchange=exchange, instrument=instrument
        )
        out.print("no trades" if value is None else str(value))


@query_app.command("sql")
def query_sql(
    query: Annotated[
        str, typer.Argument(help="A read-only SELECT over the views trades, quotes, quality_events; ? for parameters.")
    ],
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="Positional parameter (repeatable).")] = None,
    warehouse: WarehouseOpt = None,
    fmt: FormatOpt = "table",
) -> None:
    """Read-only SQL (DuckDB dialect) over the views ``trades``, ``quotes`` and ``quality_events``."""
    with errors():
        result = _engine(warehouse).sql(query, list(param or []))
        print_arrow(result.table, fmt)


@query_app.command("quotes")
def query_quotes(
    symbol: SymbolOpt = None,
    exchange: ExchangeOpt = None,
    instrument: InstrumentOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    limit: LimitOpt = 20,
    warehouse: WarehouseOpt = None,
    fmt: FormatOpt = "table",
) -> None:
    """Quotes (best bid/offer) in receive order."""
    with errors():
        result = _engine(warehouse).query_quotes(
            symbol=symbol, exchange=exchange, start_time=parse_time(start), end_time=parse_time(end), limit=limit,
            instrument=instrument,
        )  # fmt: skip
        columns = [
            "ingestion_timestamp",
            "exchange",
            "symbol",
            "source_sequence",
            "bid_price",
            "bid_size",
            "ask_price",
            "ask_size",
        ]
        table = result.table if fmt != "table" else result.table.select(columns)
        print_arrow(table, fmt, title=f"quotes ({result.num_rows} rows)")


@query_app.command("spread")
def query_spread(
    symbol: SymbolOpt = None,
    exchange: ExchangeOpt = None,
    instrument: InstrumentOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    warehouse: WarehouseOpt = None,
    fmt: FormatOpt = "table",
) -> None:
    """Spread statistics per exchange and symbol: quotes, min/max (exact), mean spread, mean mid, bps."""
    with errors():
        result = _engine(warehouse).spread(
            symbol=symbol, exchange=exchange, start_time=parse_time(start), end_time=parse_time(end),
            instrument=instrument,
        )  # fmt: skip
        print_arrow(result.table, fmt, title="spread")


@query_app.command("asof")
def query_asof(
    symbol: SymbolOpt = None,
    exchange: ExchangeOpt = None,
    instrument: InstrumentOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    limit: LimitOpt = 20,
    tolerance: Annotated[float, typer.Option(help="Seconds a quote may be older than the trade.")] = 60.0,
    warehouse: WarehouseOpt = None,
    fmt: FormatOpt = "table",
) -> None:
    """Trades, each with the quote prevailing when K2 received it (the last one received before it)."""
    with errors():
        result = _engine(warehouse).trades_with_quotes(
            symbol=symbol, exchange=exchange, start_time=parse_time(start), end_time=parse_time(end), limit=limit,
            tolerance=timedelta(seconds=tolerance), instrument=instrument,
        )  # fmt: skip
        columns = ["timestamp", "exchange", "symbol", "trade_id", "side", "price", "quantity", "bid_price", "ask_price"]
        table = result.table if fmt != "table" else result.table.select(columns)
        print_arrow(table, fmt, title=f"trades with their prevailing quote ({result.num_rows} rows)")
