"""`k2 demo`: the bundled real session -> emulator (real WebSocket) -> embedded pipeline -> Iceberg -> query.

Everything runs on this machine, offline: the emulator replays the whole recorded Binance session of
BTCUSDT and ETHUSDT (34,419 trades and 131,932 best bid/offer updates, with their real interleaving)
over a loopback WebSocket in Binance's combined-stream protocol; the pipeline is the same one `k2
run` uses, capturing trades and quotes; rows are marked ``is_sample_data = true``. The summary shows
rows per symbol, 1-minute bars, spreads and a few trades with the quote prevailing when each was
received. The demo warehouse is recreated on each run.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from k2.config import K2Settings, LakeSettings, SourceSettings
from k2.emulator.recording import BUNDLED_BINANCE_SESSION, read_recording
from k2.emulator.server import EmulatorThread, ReplayConfig
from k2.metrics import serve_metrics
from k2.query.engine import QueryEngine
from k2.services.lifecycle import stop_on_signals
from k2.services.pipeline import EmbeddedPipeline

DEMO_SYMBOLS = ("BTCUSDT", "ETHUSDT")


def demo_settings(warehouse: Path) -> K2Settings:
    return K2Settings(
        source=SourceSettings(symbols=DEMO_SYMBOLS, max_connect_attempts=5),
        lake=LakeSettings(warehouse=warehouse, flush_rows=20_000, flush_seconds=0.5),
    )


async def _stream(pipeline: EmbeddedPipeline, emulator: EmulatorThread, total: int, console: Console) -> None:
    """Run the pipeline until the replay is received (or SIGINT/SIGTERM: it stops early, committing what
    it received, and the summary follows), with a progress bar."""
    run = asyncio.create_task(pipeline.run())
    with (
        stop_on_signals(pipeline.stop, asyncio.get_running_loop()),
        Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress,
    ):
        task = progress.add_task("frames received", total=total, detail="")
        while not run.done():
            stats = pipeline.stats
            progress.update(
                task,
                completed=stats.frames,
                detail=f"committed {stats.rows_committed:,} trades, {stats.quotes_committed:,} quotes",
            )
            if emulator.finished and stats.frames >= emulator.frames_sent:
                pipeline.stop()
                await run
                break
            await asyncio.sleep(0.1)
        stats = pipeline.stats
        progress.update(
            task,
            completed=stats.frames,
            detail=f"committed {stats.rows_committed:,} trades, {stats.quotes_committed:,} quotes",
        )
    await run  # re-raise a pipeline failure, if any


def run_demo(
    warehouse: Path,
    *,
    speed: float | None,
    console: Console,
    print_table: Callable[..., None],
    metrics_port: int | None = None,
) -> None:
    if warehouse.exists():
        shutil.rmtree(warehouse)
    settings = demo_settings(warehouse)
    total = sum(1 for f in read_recording(BUNDLED_BINANCE_SESSION) if "@depth" not in f.frame[:40])
    pace = "as fast as the pipeline reads" if speed is None else f"{speed:g}x the recorded pace"
    console.print(
        f"[bold]K2 demo[/bold]: replaying a real Binance session, {total:,} trades and best bid/offer updates "
        "(BTCUSDT, ETHUSDT, 2024-08-08 23:54-00:05 UTC)\n"
        f"through the exchange emulator over a real WebSocket, {pace}, into Iceberg at {warehouse}/"
    )
    if metrics_port is not None:
        serve_metrics(metrics_port)
        console.print(
            f"Prometheus metrics on http://127.0.0.1:{metrics_port}/metrics (`k2 status --port {metrics_port}`)"
        )
    with EmulatorThread(ReplayConfig(recording=BUNDLED_BINANCE_SESSION, speed=speed)) as emulator:
        # Gap backfill asks the emulator's REST side (same port) for missing trades.
        rest = settings.source.model_copy(update={"rest_url": emulator.emulator.http_url})
        settings = settings.model_copy(update={"source": rest})
        pipeline = EmbeddedPipeline(settings, ws_base_url=emulator.url, is_sample_data=True)
        asyncio.run(_stream(pipeline, emulator, total, console))
    stats = pipeline.stats
    console.print(
        f"\nDone: {stats.frames:,} frames -> {stats.rows_committed:,} trades and {stats.quotes_committed:,} quotes "
        f"committed in {stats.commits} commits, "
        f"{stats.rejected} rejected, in {pipeline.get_stats()['elapsed_s']:.1f} s.\n"
    )
    _summary(QueryEngine.from_settings(settings), warehouse, console, print_table)


def _summary(engine: QueryEngine, warehouse: Path, console: Console, print_table: Callable[..., None]) -> None:
    per_symbol = engine.sql(
        "SELECT symbol, count(*) AS trades, arg_max(price, timestamp) AS last_price, "
        "max(timestamp) AS last_trade_at, bool_and(is_sample_data) AS all_sample_data "
        "FROM trades GROUP BY symbol ORDER BY symbol"
    )
    print_table(per_symbol.table, "table", title="Rows per symbol")
    for symbol in DEMO_SYMBOLS:
        bars = engine.ohlcv(symbol, "1m").table
        shown = bars.select(["bucket", "open", "high", "low", "close", "volume", "trades"])
        print_table(shown, "table", title=f"{symbol} 1-minute OHLCV ({bars.num_rows} bars)")
    spread = engine.spread().table.select(
        ["symbol", "quotes", "min_spread", "max_spread", "mean_spread", "mean_spread_bps"]
    )
    print_table(spread, "table", title="Spread (best ask - best bid) over the session")
    for symbol in DEMO_SYMBOLS:
        joined = engine.trades_with_quotes(symbol=symbol, limit=5).table
        shown = joined.select(["timestamp", "trade_id", "side", "price", "quantity", "bid_price", "ask_price"])
        print_table(shown, "table", title=f"{symbol}: first trades with the quote prevailing when each was received")
    _how_to_query(warehouse, console)


_SQL_EXAMPLE = "\"SELECT side, count(*) FROM trades WHERE vendor_data['is_buyer_maker'] = ? GROUP BY side\" -p true"


def _how_to_query(warehouse: Path, console: Console) -> None:
    w = f"--warehouse {warehouse}"
    console.print(
        "[bold]Query further[/bold] (same warehouse):\n"
        f"  .venv/bin/k2 query trades {w} --symbol BTCUSDT --limit 10\n"
        f"  .venv/bin/k2 query ohlcv  {w} --symbol ETHUSDT --interval 5m\n"
        f"  .venv/bin/k2 query vwap   {w} --symbol BTCUSDT\n"
        f"  .venv/bin/k2 query quotes {w} --symbol BTCUSDT --limit 10\n"
        f"  .venv/bin/k2 query spread {w}\n"
        f"  .venv/bin/k2 query asof   {w} --symbol ETHUSDT --limit 10\n"
        f"  .venv/bin/k2 query sql    {w} " + _SQL_EXAMPLE + "\n"
        "  Python: from k2.query.engine import QueryEngine  (see docs/query.md)",
        highlight=False,
    )
