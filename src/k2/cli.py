"""The `k2` command line. Commands are thin: parse options, build settings, call a service, print.

Only this module turns an error into an exit code (1) and a one-line message on stderr: a K2Error
as its message; anything else (a bug) as ``error: unexpected <Type>: <message> (traceback in
<file>)``, the plain traceback saved to that file (named in a ``cli.unexpected_error`` event too
when services log JSON). No traceback is rendered on the terminal (typer's pretty tracebacks with
locals could take minutes on a large local, with SIGINT ignored meanwhile), so a failing process
exits at once.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import typer

from k2.api.cli import api_key_app
from k2.cliutil import (
    FeedSymbolsOpt,
    FormatOpt,
    KindsOpt,
    SymbolsOpt,
    VenueOpt,
    VenuesOpt,
    WarehouseOpt,
    cell,
    err,
    errors,
    out,
    print_arrow,
    report_unexpected,
    settings_from,
)
from k2.config import K2Settings, load_settings
from k2.devservices.cli import dev_app
from k2.errors import ConfigError
from k2.logging import configure_logging, get_logger
from k2.query.cli import query_app

log = get_logger(__name__)

app = typer.Typer(
    name="k2",
    help="K2: live exchange market data into Apache Iceberg, queryable with DuckDB.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # see the module docstring: one line, never a rendered traceback
)
app.add_typer(query_app, name="query")
app.add_typer(dev_app, name="dev")  # k2.devservices: Kafka, registry, S3, PostgreSQL for development
app.add_typer(api_key_app, name="api-key")  # k2.api.keys: keys of `k2 serve`


def main() -> None:
    """The ``k2`` entry point: the typer app, with any exception a command let through reported in
    one line (exit code 1) instead of a traceback."""
    try:
        app()
    except Exception as exc:
        report_unexpected(exc)
        sys.exit(1)


@app.callback()
def _main() -> None:
    """Quiet by default: only warnings and errors are logged; long-running services reconfigure from settings."""
    configure_logging(level="WARNING")


def _service_logging() -> None:
    """Service logging from settings: ``K2_LOG__FORMAT=json`` (set in the image) and ``K2_LOG__LEVEL``."""
    with errors():
        log = load_settings().log
        if log.format not in ("json", "console") or log.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"K2_LOG__FORMAT must be json or console and K2_LOG__LEVEL DEBUG..ERROR: {log}")
        configure_logging(log.level, "json" if log.format == "json" else "console")


# --- pipeline commands --------------------------------------------------------------------------
WsUrlOpt = Annotated[
    list[str] | None,
    typer.Option(help="WebSocket base URL (default: the venue's); VENUE:URL for one venue of --venues. Repeatable."),
]
RestUrlOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="REST base URL for symbol metadata and gap backfill (e.g. the emulator's http:// URL); VENUE:URL for "
        "one venue of --venues. Repeatable."
    ),
]


@app.command()
def run(
    symbols: FeedSymbolsOpt = None,
    warehouse: WarehouseOpt = None,
    venue: VenueOpt = None,
    venues: VenuesOpt = None,
    kinds: KindsOpt = None,
    ws_url: WsUrlOpt = None,
    rest_url: RestUrlOpt = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    connect_attempts: Annotated[
        int, typer.Option(help="Give up after this many consecutive failed connection attempts.")
    ] = 5,
    sample: Annotated[bool, typer.Option(help="Mark rows is_sample_data (replays).")] = False,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus /metrics on this port.")] = None,
    serve: Annotated[
        int | None, typer.Option("--serve", help="Also serve the REST API and dashboard on this port (k2 serve).")
    ] = None,
) -> None:
    """Stream live trades and quotes of one venue or several (--venues) into the local Iceberg warehouse
    (embedded mode, no broker): one table per kind, the venue in its exchange column."""
    from k2.services.lifecycle import freeze_start_up
    from k2.services.run import run_pipeline

    _service_logging()
    with errors():
        settings = settings_from(
            symbols=symbols, warehouse=warehouse, max_connect_attempts=connect_attempts, ws_url=ws_url,
            rest_url=rest_url, venue=venue, venues=venues, kinds=_kinds(kinds),
        )  # fmt: skip
        if metrics_port is not None:
            settings = settings.model_copy(
                update={"metrics": settings.metrics.model_copy(update={"port": metrics_port})}
            )
        if serve is not None:
            settings = settings.model_copy(update={"api": settings.api.model_copy(update={"port": serve})})
        freeze_start_up()
        stats = asyncio.run(run_pipeline(settings, duration_s=duration, is_sample_data=sample, serve=serve is not None))
    out.print(
        f"stopped: {stats.frames} frames, {stats.trades} trades, {stats.quotes} quotes, {stats.rejected} rejected, "
        f"{stats.rows_committed + stats.quotes_committed} rows in {stats.commits} commits -> {settings.lake.warehouse}"
    )


@app.command()
def demo(
    warehouse: Annotated[Path, typer.Option(help="Demo warehouse (recreated on each run).")] = Path("k2-demo"),
    speed: Annotated[str, typer.Option(help="Replay speed: a factor like 50, or 'max'.")] = "50",
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus /metrics on this port (watch with `k2 status`).")
    ] = None,
) -> None:
    """Replay the bundled real Binance recording through the emulator into Iceberg, then query it."""
    from k2.services.demo import run_demo

    configure_logging(level="WARNING")
    with errors():
        replay_speed = None if speed == "max" else _positive_float(speed)
        run_demo(warehouse, speed=replay_speed, console=out, print_table=print_arrow, metrics_port=metrics_port)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--speed must be a number or 'max', not {text!r}") from None
    if value <= 0:
        raise ConfigError("--speed must be positive")
    return value


@app.command("serve")
def serve_api(
    warehouse: WarehouseOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default api.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default api.port, 8000; 0 = any free port).")] = None,
    auth: Annotated[str | None, typer.Option(help="auto, keys or open (default api.auth; docs/api.md).")] = None,
) -> None:
    """Serve the REST query API (/v1, OpenAPI at /docs) and the web dashboard (/dashboard/)."""
    from k2.services.serve import serve

    _service_logging()
    with errors():
        settings = settings_from(warehouse=warehouse)
        update = {k: v for k, v in {"host": host, "port": port, "auth": auth}.items() if v is not None}
        if update:
            data = settings.model_dump()
            data["api"].update(update)
            settings = load_settings(**data)
        serve(settings, on_ready=lambda url: out.print(f"serving {url}/v1 (dashboard: {url}/dashboard/)"))


def _kinds(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(k for k in text.split(",") if k.strip())


# --- emulator & capture -------------------------------------------------------------------------
@app.command()
def emulator(
    venue: Annotated[str, typer.Option(help="Whose protocol to speak (k2.sources.VENUES).")] = "binance",
    recording: Annotated[
        Path | None, typer.Option(help="Recording to replay (default: the venue's bundled one; Binance: the session).")
    ] = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 9443,
    speed: Annotated[str, typer.Option(help="1 = recorded pace, N = N times faster, 'max' = as fast as read.")] = "1",
    loop: Annotated[bool, typer.Option(help="Start over at the end of the recording.")] = False,
    live: Annotated[
        bool, typer.Option(help="Keep the feed moving while no client is connected, as a live venue does.")
    ] = False,
    disconnect_after: Annotated[list[int] | None, typer.Option(help="Drop the connection after N frames.")] = None,
    duplicate_every: Annotated[int, typer.Option(help="Send every k-th frame twice.")] = 0,
    reorder_every: Annotated[int, typer.Option(help="Swap every k-th frame with the next.")] = 0,
    malformed_every: Annotated[int, typer.Option(help="Insert a bad frame after every k-th frame.")] = 0,
    adversarial_every: Annotated[
        int, typer.Option(help="Insert a hostile frame (absurd ids, times, prices, foreign streams) after every k-th.")
    ] = 0,
) -> None:
    """Serve a venue's stream protocol on a local WebSocket, replaying a recording."""
    from k2.emulator.recording import BUNDLED_BINANCE_SESSION
    from k2.emulator.server import Faults, ReplayConfig, serve_forever
    from k2.services.lifecycle import run_until_signal
    from k2.sources import load_venue

    configure_logging()
    with errors():
        protocol = load_venue(venue).load("emulator")()
        default = BUNDLED_BINANCE_SESSION if protocol.name == "binance" else protocol.default_recording
        config = ReplayConfig(
            protocol=protocol,
            recording=recording or default,
            speed=None if speed == "max" else _positive_float(speed),
            loop=loop,
            live=live,
            faults=Faults(
                disconnect_after=tuple(disconnect_after or ()),
                duplicate_every=duplicate_every,
                reorder_every=reorder_every,
                malformed_every=malformed_every,
                adversarial_every=adversarial_every,
            ),
        )
        asyncio.run(run_until_signal(lambda: serve_forever(config, host, port)))


@app.command()
def capture(
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Recording to write (.jsonl.gz).")],
    symbols: SymbolsOpt = None,
    venue: VenueOpt = None,
    kinds: KindsOpt = None,
    ws_url: Annotated[str | None, typer.Option(help="WebSocket base URL (default: the venue's).")] = None,
    max_frames: Annotated[int | None, typer.Option(help="Stop after this many frames.")] = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    connect_attempts: Annotated[int, typer.Option()] = 5,
) -> None:
    """Record raw frames with receive times to a compressed JSON-lines file the emulator can replay."""
    from k2.services.capture import capture as run_capture

    configure_logging()
    with errors():
        settings = settings_from(
            symbols=symbols, max_connect_attempts=connect_attempts, venue=venue, kinds=_kinds(kinds)
        )
        written = asyncio.run(run_capture(settings, out_path, url=ws_url, max_frames=max_frames, duration_s=duration))
    out.print(f"captured {written} frames -> {out_path}")


# --- lake upkeep (docs/lake.md) -----------------------------------------------------------------
@app.command()
def maintain(
    warehouse: WarehouseOpt = None,
    table: Annotated[
        list[str] | None, typer.Option("--table", "-t", help="Table to maintain (repeatable; default: K2's tables).")
    ] = None,
    compact: Annotated[bool, typer.Option(help="Compact small data files.")] = True,
    orphans: Annotated[bool, typer.Option(help="Delete orphan files older than --orphan-min-age.")] = True,
    target_file_bytes: Annotated[int | None, typer.Option(help="Compaction target file size.")] = None,
    orphan_min_age: Annotated[float | None, typer.Option(help="Orphan safety age in seconds.")] = None,
    snapshot_grace: Annotated[
        float | None, typer.Option(help="Seconds a replaced snapshot is kept for running readers.")
    ] = None,
    retention_days: Annotated[
        int | None, typer.Option(help="Drop whole days older than this from the tables maintained.")
    ] = None,
    fmt: FormatOpt = "table",
    pause_before_commit: Annotated[Path | None, typer.Option(hidden=True)] = None,
) -> None:
    """Compact small files, expire snapshots, sweep orphan files, apply retention; print each table's health."""
    from k2.services.maintain import pause_until_removed, report_rows, run_maintain, with_policy

    with errors():
        settings = with_policy(
            settings_from(warehouse=warehouse), table, compact=compact, remove_orphans=orphans,
            target_file_bytes=target_file_bytes, orphan_min_age_s=orphan_min_age, snapshot_grace_s=snapshot_grace,
            retention_days=retention_days,
        )  # fmt: skip
        hook = (lambda: pause_until_removed(pause_before_commit)) if pause_before_commit else None
        reports = run_maintain(settings, table, before_commit=hook)
    rows = report_rows(reports)
    if fmt == "table" and rows:  # one field per line, one column per table (like `k2 quality`)
        fields = [k for k in rows[0] if k != "table"]
        print_arrow(pa.table({"field": fields} | {r["table"]: [str(r[f]) for f in fields] for r in rows}), fmt)
    else:
        print_arrow(pa.Table.from_pylist(rows) if rows else pa.table({"table": pa.array([], pa.string())}), fmt)
    for report in reports:
        for step, error in report.errors.items():
            err.print(f"[red]error:[/red] {report.table}: {step}: {error}", highlight=False, soft_wrap=True)
    if any(report.errors for report in reports):
        raise typer.Exit(1)


# --- observability ------------------------------------------------------------------------------
@app.command()
def status(
    url: Annotated[
        str | None, typer.Option(help="The process's /metrics URL (default: http://127.0.0.1:PORT/metrics).")
    ] = None,
    port: Annotated[int, typer.Option(help="Metrics port of a local K2 process (when --url is not given).")] = 9108,
    interval: Annotated[float, typer.Option(help="Seconds between scrapes.")] = 1.0,
    count: Annotated[int | None, typer.Option(help="Stop after this many refreshes (default: until Ctrl-C).")] = None,
) -> None:
    """Live view of a running K2 process (feeds, rates, freshness, commits) from its /metrics endpoint."""
    from k2.services.status import watch

    with errors():
        if interval <= 0:
            raise ConfigError("--interval must be positive")
        watch(url or f"http://127.0.0.1:{port}/metrics", interval_s=interval, console=out, updates=count)


@app.command("metrics-doc")
def metrics_doc(
    path: Annotated[Path, typer.Option(help="The operations guide to update.")] = Path("docs/operations.md"),
    check: Annotated[bool, typer.Option(help="Fail if the file is out of date instead of writing it.")] = False,
) -> None:
    """Regenerate the metric reference in docs/operations.md from k2.metrics (--check: fail on drift)."""
    from k2.services.metrics_doc import update_operations_doc

    with errors():
        changed = update_operations_doc(path, check=check)
    out.print(f"{path}: {'updated' if changed else 'up to date'}")


# --- distributed mode: Kafka (docs/kafka.md) ----------------------------------------------------
BootstrapOpt = Annotated[str | None, typer.Option(help="Kafka bootstrap servers (host:port,...).")]
RegistryOpt = Annotated[str | None, typer.Option(help="Schema registry URL (Confluent API).")]


def _with_kafka(settings: K2Settings, metrics_port: int | None = None, **kafka: Any) -> K2Settings:
    """``settings`` with non-None Kafka options (and the metrics port) applied."""
    data = settings.model_dump()
    data["kafka"].update({k: v for k, v in kafka.items() if v is not None})
    if metrics_port is not None:
        data["metrics"]["port"] = metrics_port
    return load_settings(**data)


@app.command()
def ingest(
    symbols: FeedSymbolsOpt = None,
    venue: VenueOpt = None,
    venues: VenuesOpt = None,
    kinds: KindsOpt = None,
    ws_url: WsUrlOpt = None,
    rest_url: RestUrlOpt = None,
    bootstrap_servers: BootstrapOpt = None,
    schema_registry: RegistryOpt = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    connect_attempts: Annotated[int, typer.Option(help="Give up after this many failed connection attempts.")] = 5,
    sample: Annotated[bool, typer.Option(help="Mark rows is_sample_data (replays).")] = False,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus /metrics on this port.")] = None,
) -> None:
    """Stream live trades and quotes of one venue or several (--venues) into Kafka (Avro, Confluent wire format, a
    topic per venue and kind), keyed by symbol; gaps backfilled over REST, duplicates dropped, quality events to
    each venue's quality_events topic."""
    from k2.services.ingest import run_ingest
    from k2.services.lifecycle import freeze_start_up
    from k2.services.run import resolve_symbol_info

    _service_logging()
    with errors():
        settings = _with_kafka(
            settings_from(
                symbols=symbols,
                max_connect_attempts=connect_attempts,
                ws_url=ws_url,
                rest_url=rest_url,
                venue=venue,
                venues=venues,
                kinds=_kinds(kinds),
            ),
            metrics_port,
            bootstrap_servers=bootstrap_servers,
            schema_registry_url=schema_registry,
        )
        info = resolve_symbol_info(settings) if not ws_url else None  # an emulator: the offline rules
        freeze_start_up()
        stats = asyncio.run(run_ingest(settings, duration_s=duration, is_sample_data=sample, symbol_info=info))
    p = stats.producer
    out.print(
        f"stopped: {stats.frames} frames, {stats.trades} trades, {stats.backfilled} backfilled, "
        f"{stats.rejected} rejected, {stats.events} quality events; "
        f"{p.get('delivered', 0)} delivered, {p.get('failed', 0)} failed"
    )


@app.command()
def consume(
    warehouse: WarehouseOpt = None,
    venues: VenuesOpt = None,
    topic: Annotated[list[str] | None, typer.Option(help="Topic to consume (repeatable).")] = None,
    group: Annotated[str | None, typer.Option(help="Consumer group (one per table).")] = None,
    bootstrap_servers: BootstrapOpt = None,
    schema_registry: RegistryOpt = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    idle_exit: Annotated[float | None, typer.Option(help="Stop after this many seconds without messages.")] = None,
    max_messages: Annotated[int | None, typer.Option(help="Stop after about this many messages.")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus /metrics on this port.")] = None,
) -> None:
    """Consume trades (and quotes, quality events) from Kafka into Iceberg, exactly once (offsets live in the
    Iceberg commits); by default every configured venue's topics (--venues), one table per kind."""
    from k2.services.consume import run_consume
    from k2.services.lifecycle import freeze_start_up

    _service_logging()
    with errors():
        settings = _with_kafka(
            settings_from(warehouse=warehouse, venues=venues),
            metrics_port,
            bootstrap_servers=bootstrap_servers,
            schema_registry_url=schema_registry,
            consumer_group=group,
        )
        freeze_start_up()
        stats = run_consume(
            settings, topics=topic, duration_s=duration, idle_exit_s=idle_exit, max_messages=max_messages
        )
    out.print(
        f"stopped: {stats.messages} messages, {stats.rows_committed} rows in {stats.commits} commits, "
        f"{stats.dead_lettered} dead-lettered -> {settings.lake.warehouse}"
    )


# --- quality --------------------------------------------------------------------------------------
@app.command()
def quality(
    symbol: Annotated[str | None, typer.Option("--symbol", "-s", help="Only this symbol.")] = None,
    exchange: Annotated[str | None, typer.Option(help="Only this venue's exchange, e.g. BINANCE.")] = None,
    day: Annotated[str | None, typer.Option(help="Only this UTC day, YYYY-MM-DD.")] = None,
    warehouse: WarehouseOpt = None,
    fmt: FormatOpt = "table",
) -> None:
    """Completeness and quality per venue, symbol and day: ids expected vs stored, gaps, backfill, duplicates,
    anomalies."""
    from k2.services.quality_report import parse_day, quality_report

    with errors():
        table = quality_report(settings_from(warehouse=warehouse), symbol=symbol, day=parse_day(day), exchange=exchange)
        if fmt == "table":  # many columns: one field per line, one column per venue-symbol-day
            keys = table.select(["exchange", "symbol", "day"]).to_pylist()
            names = [f"{r['exchange']} {r['symbol']} {r['day']}" for r in keys]
            fields = [c for c in table.column_names if c not in ("exchange", "symbol", "day")]
            columns = {"field": fields} | {n: [cell(v) for v in row] for n, row in zip(
                names, zip(*(table.column(c).to_pylist() for c in fields), strict=True), strict=True)}  # fmt: skip
            table = pa.table(columns) if names else table
        print_arrow(table, fmt, title="quality report")


if __name__ == "__main__":  # pragma: no cover
    main()
