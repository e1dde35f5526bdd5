"""The `k2` command line. Commands are thin: parse options, build settings, call a service, print.

Only this module turns a K2Error into an exit code (1) and a one-line message on stderr.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import typer
from rich.console import Console
from rich.table import Table

from k2.config import K2Settings, load_settings
from k2.errors import ConfigError, K2Error
from k2.logging import configure_logging

app = typer.Typer(
    name="k2",
    help="K2: live exchange market data into Apache Iceberg, queryable with DuckDB.",
    no_args_is_help=True,
    add_completion=False,
)
query_app = typer.Typer(help="Query the trades table (DuckDB over Iceberg).", no_args_is_help=True)
app.add_typer(query_app, name="query")

out = Console()
err = Console(stderr=True)

SymbolsOpt = Annotated[
    str | None, typer.Option("--symbols", "-s", help="Comma-separated symbols, e.g. BTCUSDT,ETHUSDT.")
]
WarehouseOpt = Annotated[Path | None, typer.Option("--warehouse", "-w", help="Iceberg warehouse directory.")]


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except K2Error as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _settings(*, symbols: str | None = None, warehouse: Path | None = None, **source: Any) -> K2Settings:
    """Settings from env/file, with command-line options (non-None) taking precedence."""
    data = load_settings().model_dump()
    data["source"].update({k: v for k, v in source.items() if v is not None})
    if symbols:
        data["source"]["symbols"] = tuple(s for s in symbols.split(",") if s.strip())
    if warehouse:
        data["lake"]["warehouse"] = warehouse
    return load_settings(**data)


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"not an ISO-8601 time: {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def print_arrow(table: pa.Table, fmt: str = "table", title: str | None = None) -> None:
    """Print an Arrow table as a rich table, CSV or JSON lines (decimals printed exactly)."""
    rows = table.to_pylist()
    if fmt == "json":
        for row in rows:
            out.print_json(json.dumps(row, default=str))
        return
    if fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(table.column_names)
        for row in rows:
            writer.writerow([_cell(v) for v in row.values()])
        return
    view = Table(title=title, show_lines=False, caption="times in UTC" if _has_time(table) else None)
    for name in table.column_names:
        view.add_column(name, overflow="fold")
    for row in rows:
        view.add_row(*(_cell(v) for v in row.values()))
    out.print(view)


def _has_time(table: pa.Table) -> bool:
    return any(pa.types.is_timestamp(f.type) for f in table.schema)


def _cell(value: Any) -> str:
    """Display form: exact decimals without padding zeros, UTC times without the offset noise."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        text = format(value, "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f").removesuffix(".000000")
    if isinstance(value, list) and value and isinstance(value[0], tuple):
        return json.dumps(dict(value))
    return str(value)


# --- pipeline commands --------------------------------------------------------------------------
@app.command()
def run(
    symbols: SymbolsOpt = None,
    warehouse: WarehouseOpt = None,
    ws_url: Annotated[str | None, typer.Option(help="WebSocket base URL (default: Binance).")] = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    connect_attempts: Annotated[
        int, typer.Option(help="Give up after this many consecutive failed connection attempts.")
    ] = 5,
    sample: Annotated[bool, typer.Option(help="Mark rows is_sample_data (replays).")] = False,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus /metrics on this port.")] = None,
) -> None:
    """Stream live trades into the local Iceberg warehouse (embedded mode, no broker)."""
    from k2.services.run import run_pipeline

    configure_logging()
    with _errors():
        settings = _settings(symbols=symbols, warehouse=warehouse, max_connect_attempts=connect_attempts)
        if metrics_port is not None:
            settings = settings.model_copy(
                update={"metrics": settings.metrics.model_copy(update={"port": metrics_port})}
            )
        stats = asyncio.run(
            run_pipeline(settings, ws_base_url=ws_url, duration_s=duration, is_sample_data=sample)
        )
    out.print(
        f"stopped: {stats.frames} frames, {stats.trades} trades, {stats.rejected} rejected, "
        f"{stats.rows_committed} rows in {stats.commits} commits -> {settings.lake.warehouse}"
    )


@app.command()
def demo(
    warehouse: Annotated[Path, typer.Option(help="Demo warehouse (recreated on each run).")] = Path(
        "k2-demo"
    ),
    speed: Annotated[str, typer.Option(help="Replay speed: a factor like 50, or 'max'.")] = "50",
) -> None:
    """Replay the bundled real Binance recording through the emulator into Iceberg, then query it."""
    from k2.services.demo import run_demo

    configure_logging(level="WARNING")
    with _errors():
        replay_speed = None if speed == "max" else _positive_float(speed)
        run_demo(warehouse, speed=replay_speed, console=out, print_table=print_arrow)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--speed must be a number or 'max', not {text!r}") from None
    if value <= 0:
        raise ConfigError("--speed must be positive")
    return value


# --- query commands -----------------------------------------------------------------------------
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")]


def _engine(warehouse: Path | None) -> Any:
    from k2.query.engine import QueryEngine

    return QueryEngine.from_settings(_settings(warehouse=warehouse))


@query_app.command("trades")
def query_trades(
    symbol: Annotated[str | None, typer.Option()] = None,
    exchange: Annotated[str | None, typer.Option()] = None,
    start: Annotated[str | None, typer.Option(help="ISO-8601 start (UTC if no offset).")] = None,
    end: Annotated[str | None, typer.Option(help="ISO-8601 end, exclusive.")] = None,
    limit: Annotated[int, typer.Option()] = 20,
    warehouse: WarehouseOpt = None,
    fmt: FormatOpt = "table",
) -> None:
    """Trades filtered by symbol, exchange and time range."""
    with _errors():
        result = _engine(warehouse).query_trades(
            symbol=symbol,
            exchange=exchange,
            start_time=_parse_time(start),
            end_time=_parse_time(end),
            limit=limit,
        )
        columns = ["timestamp", "symbol", "trade_id", "side", "price", "quantity", "exchange"]
        table = result.table if fmt != "table" else result.table.select(columns)
        print_arrow(table, fmt, title=f"trades ({result.num_rows} rows)")


@query_app.command("ohlcv")
def query_ohlcv(
    symbol: Annotated[str, typer.Option()],
    interval: Annotated[str, typer.Option(help="Bar width: 1s, 1m, 5m, 1h, 1d, ...")] = "1m",
    start: Annotated[str | None, typer.Option()] = None,
    end: Annotated[str | None, typer.Option()] = None,
    exchange: Annotated[str | None, typer.Option()] = None,
    warehouse: WarehouseOpt = None,
    fmt: FormatOpt = "table",
) -> None:
    """OHLCV bars (exact decimals) at any interval."""
    with _errors():
        result = _engine(warehouse).ohlcv(
            symbol, interval, start_time=_parse_time(start), end_time=_parse_time(end), exchange=exchange
        )
        print_arrow(result.table, fmt, title=f"{symbol} {interval} bars")


@query_app.command("vwap")
def query_vwap(
    symbol: Annotated[str, typer.Option()],
    start: Annotated[str | None, typer.Option()] = None,
    end: Annotated[str | None, typer.Option()] = None,
    exchange: Annotated[str | None, typer.Option()] = None,
    warehouse: WarehouseOpt = None,
) -> None:
    """Exact volume-weighted average price over a time range."""
    with _errors():
        value = _engine(warehouse).vwap(
            symbol, start_time=_parse_time(start), end_time=_parse_time(end), exchange=exchange
        )
        out.print("no trades" if value is None else str(value))


@query_app.command("sql")
def query_sql(
    query: Annotated[
        str, typer.Argument(help="A read-only SELECT over the view `trades`; use ? for parameters.")
    ],
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Positional parameter (repeatable).")
    ] = None,
    warehouse: WarehouseOpt = None,
    fmt: FormatOpt = "table",
) -> None:
    """Read-only SQL (DuckDB dialect) over the trades table."""
    with _errors():
        result = _engine(warehouse).sql(query, list(param or []))
        print_arrow(result.table, fmt)


# --- emulator & capture -------------------------------------------------------------------------
@app.command()
def emulator(
    recording: Annotated[
        Path | None, typer.Option(help="Recording to replay (default: the bundled one).")
    ] = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 9443,
    speed: Annotated[
        str, typer.Option(help="1 = recorded pace, N = N times faster, 'max' = as fast as read.")
    ] = "1",
    loop: Annotated[bool, typer.Option(help="Start over at the end of the recording.")] = False,
    disconnect_after: Annotated[
        list[int] | None, typer.Option(help="Drop the connection after N frames.")
    ] = None,
    duplicate_every: Annotated[int, typer.Option(help="Send every k-th frame twice.")] = 0,
    reorder_every: Annotated[int, typer.Option(help="Swap every k-th frame with the next.")] = 0,
    malformed_every: Annotated[int, typer.Option(help="Insert a bad frame after every k-th frame.")] = 0,
) -> None:
    """Serve Binance's stream protocol on a local WebSocket, replaying a recording."""
    from k2.emulator.recording import BUNDLED_BINANCE_TRADES
    from k2.emulator.server import Faults, ReplayConfig, serve_forever

    configure_logging()
    with _errors():
        config = ReplayConfig(
            recording=recording or BUNDLED_BINANCE_TRADES,
            speed=None if speed == "max" else _positive_float(speed),
            loop=loop,
            faults=Faults(
                disconnect_after=tuple(disconnect_after or ()),
                duplicate_every=duplicate_every,
                reorder_every=reorder_every,
                malformed_every=malformed_every,
            ),
        )
        asyncio.run(serve_forever(config, host, port))


@app.command()
def capture(
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Recording to write (.jsonl.gz).")],
    symbols: SymbolsOpt = None,
    ws_url: Annotated[str | None, typer.Option(help="WebSocket base URL (default: Binance).")] = None,
    max_frames: Annotated[int | None, typer.Option(help="Stop after this many frames.")] = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    connect_attempts: Annotated[int, typer.Option()] = 5,
) -> None:
    """Record raw frames with receive times to a compressed JSON-lines file the emulator can replay."""
    from k2.services.capture import capture as run_capture

    configure_logging()
    with _errors():
        settings = _settings(symbols=symbols, max_connect_attempts=connect_attempts)
        written = asyncio.run(
            run_capture(settings, out_path, url=ws_url, max_frames=max_frames, duration_s=duration)
        )
    out.print(f"captured {written} frames -> {out_path}")


if __name__ == "__main__":  # pragma: no cover
    app()
