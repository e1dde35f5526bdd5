"""`k2 status`: parsing a /metrics page, the figures derived from two scrapes, the rendered view,
and the command against a real endpoint served on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import pytest
from rich.console import Console
from typer.testing import CliRunner

from k2.cli import app
from k2.errors import ScrapeError
from k2.metrics import (
    LAKE_COMMIT_SECONDS,
    LAKE_LAST_COMMIT_TIME,
    LAKE_ROWS_WRITTEN,
    LAST_EVENT_TIME,
    WS_CONNECTED,
    WS_MESSAGES,
    serve_metrics,
)
from k2.services.status import (
    FeedStatus,
    HealthStatus,
    SymbolStatus,
    TableStatus,
    build_report,
    parse_exposition,
    render,
    scrape,
)

T0 = 1_723_161_600.0  # 2024-08-09 00:00:00 UTC


def _page(frames: int, rows: int, commits: int, commit_sum: float, connected: int = 1) -> str:
    return f"""# HELP k2_ws_connected 1 while open.
# TYPE k2_ws_connected gauge
k2_ws_connected{{venue="binance"}} {connected}
# HELP k2_ws_messages_received_total Frames.
# TYPE k2_ws_messages_received_total counter
k2_ws_messages_received_total{{venue="binance"}} {frames}
k2_ws_messages_received_created{{venue="binance"}} 1.7e9
# HELP k2_ws_reconnects_total Reconnects.
# TYPE k2_ws_reconnects_total counter
k2_ws_reconnects_total{{venue="binance",reason="dropped"}} 2
k2_ws_reconnects_total{{venue="binance",reason="error"}} 1
# HELP k2_last_event_timestamp_seconds Newest event.
# TYPE k2_last_event_timestamp_seconds gauge
k2_last_event_timestamp_seconds{{venue="binance",symbol="BTCUSDT"}} {T0 - 90}
k2_last_event_timestamp_seconds{{venue="binance",symbol="ETHUSDT"}} {T0 - 3.5}
# HELP k2_records_normalized_total Records.
# TYPE k2_records_normalized_total counter
k2_records_normalized_total{{venue="binance",data_type="trades"}} {frames}
# HELP k2_messages_rejected_total Rejected.
# TYPE k2_messages_rejected_total counter
k2_messages_rejected_total{{venue="binance",reason="malformed_json"}} 4
# HELP k2_lake_rows_written_total Rows.
# TYPE k2_lake_rows_written_total counter
k2_lake_rows_written_total{{table="market_data.trades"}} {rows}
# HELP k2_lake_commit_duration_seconds Commit time.
# TYPE k2_lake_commit_duration_seconds histogram
k2_lake_commit_duration_seconds_bucket{{table="market_data.trades",le="+Inf"}} {commits}
k2_lake_commit_duration_seconds_count{{table="market_data.trades"}} {commits}
k2_lake_commit_duration_seconds_sum{{table="market_data.trades"}} {commit_sum}
# HELP k2_lake_last_commit_timestamp_seconds Last commit.
# TYPE k2_lake_last_commit_timestamp_seconds gauge
k2_lake_last_commit_timestamp_seconds{{table="market_data.trades"}} {T0 - 1}
# HELP k2_quality_events_total Quality events.
# TYPE k2_quality_events_total counter
k2_quality_events_total{{venue="binance",kind="GAP"}} 3
# HELP k2_backfill_gaps_total Gaps.
# TYPE k2_backfill_gaps_total counter
k2_backfill_gaps_total{{venue="binance",outcome="resolved"}} 2
# HELP k2_producer_queue_messages Queue.
# TYPE k2_producer_queue_messages gauge
k2_producer_queue_messages 17
# HELP python_gc_objects_collected_total Not K2.
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{{generation="0"}} 5
"""


def test_report_from_two_scrapes_has_exact_figures() -> None:
    before = parse_exposition(_page(frames=1_000, rows=800, commits=4, commit_sum=0.2), url="u", at=T0 - 2)
    after = parse_exposition(_page(frames=3_000, rows=2_800, commits=8, commit_sum=0.6), url="u", at=T0)
    report = build_report(after, before)
    assert report.taken_at == datetime(2024, 8, 9, tzinfo=UTC)
    assert report.feeds == [FeedStatus("binance", connected=True, frames=3_000, frames_per_s=1_000.0, reconnects=3)]
    assert report.symbols == [
        SymbolStatus("binance", "BTCUSDT", datetime(2024, 8, 8, 23, 58, 30, tzinfo=UTC), 90.0),
        SymbolStatus("binance", "ETHUSDT", datetime(2024, 8, 8, 23, 59, 56, 500_000, tzinfo=UTC), 3.5),
    ]
    (table,) = report.tables
    assert table == TableStatus(
        table="market_data.trades",
        rows=2_800,
        rows_per_s=1_000.0,
        commits=8,
        mean_commit_s=pytest.approx(0.075),
        last_commit=datetime(2024, 8, 8, 23, 59, 59, tzinfo=UTC),
        conflicts=0,
    )
    assert [(r.name, r.labels, r.value, r.per_s) for r in report.records] == [
        ("k2_records_normalized_total", (("data_type", "trades"), ("venue", "binance")), 3_000, 1_000.0)
    ]
    assert [(r.name, r.value, r.per_s) for r in report.rejected] == [("k2_messages_rejected_total", 4, 0.0)]
    assert [(r.name, r.labels, r.value) for r in report.quality] == [
        ("k2_quality_events_total", (("kind", "GAP"), ("venue", "binance")), 3),
        ("k2_backfill_gaps_total", (("outcome", "resolved"), ("venue", "binance")), 2),
    ]
    # Everything else k2_* is listed by name; other processes' series are not.
    assert [(r.name, r.value) for r in report.other] == [("k2_producer_queue_messages", 17)]


def test_first_scrape_has_no_rates_and_a_counter_reset_counts_from_zero() -> None:
    first = build_report(parse_exposition(_page(1_000, 800, 4, 0.2), at=T0))
    assert first.feeds[0].frames_per_s is None and first.tables[0].rows_per_s is None
    restarted = build_report(
        parse_exposition(_page(50, 10, 1, 0.1, connected=0), at=T0 + 5),
        parse_exposition(_page(1_000, 800, 4, 0.2), at=T0),
    )
    assert restarted.feeds[0] == FeedStatus("binance", connected=False, frames=50, frames_per_s=10.0, reconnects=3)
    assert restarted.tables[0].rows_per_s == 2.0


def test_render_shows_every_section() -> None:
    report = build_report(
        parse_exposition(_page(3_000, 2_800, 8, 0.6), url="http://h:1/metrics", at=T0),
        parse_exposition(_page(1_000, 800, 4, 0.2), url="http://h:1/metrics", at=T0 - 2),
    )
    console = Console(record=True, width=160, color_system=None)
    console.print(render(report, error="connection refused"))
    text = console.export_text()
    assert "K2 status http://h:1/metrics  at 2024-08-09 00:00:00 UTC" in text
    assert "unreachable: connection refused" in text
    lines = {" ".join(line.replace("│", " ").split()) for line in text.splitlines()}
    assert "binance connected 3,000 1,000.0 3" in lines
    assert "binance BTCUSDT 2024-08-08 23:58:30 90.0 s" in lines
    assert "binance ETHUSDT 2024-08-08 23:59:56 3.5 s" in lines
    assert "records_normalized_total data_type=trades,venue=binance 3,000 1,000.0" in lines
    assert "messages_rejected_total reason=malformed_json,venue=binance 4 0.0" in lines
    assert "market_data.trades 2,800 1,000.0 8 75.0 ms 2024-08-08 23:59:59 0" in lines
    assert "quality_events_total kind=GAP,venue=binance 3 0.0" in lines
    assert "backfill_gaps_total outcome=resolved,venue=binance 2 0.0" in lines
    assert "k2_producer_queue_messages 17 -" in lines


HEALTH = f"""# TYPE k2_lake_data_files gauge
k2_lake_data_files{{table="market_data.trades"}} 1200
# TYPE k2_lake_small_data_files gauge
k2_lake_small_data_files{{table="market_data.trades"}} 1190
# TYPE k2_lake_partitions gauge
k2_lake_partitions{{table="market_data.trades"}} 3
# TYPE k2_lake_partition_max_files gauge
k2_lake_partition_max_files{{table="market_data.trades"}} 900
# TYPE k2_lake_data_file_avg_bytes gauge
k2_lake_data_file_avg_bytes{{table="market_data.trades"}} 3145728
# TYPE k2_lake_retained_snapshots gauge
k2_lake_retained_snapshots{{table="market_data.trades"}} 21
# TYPE k2_lake_orphan_bytes gauge
k2_lake_orphan_bytes{{table="market_data.trades"}} 2048
# TYPE k2_lake_last_maintenance_timestamp_seconds gauge
k2_lake_last_maintenance_timestamp_seconds{{table="market_data.trades"}} {T0 - 60}
"""


def test_lake_health_has_its_own_section() -> None:
    report = build_report(parse_exposition(HEALTH, url="u", at=T0))
    assert report.health == [
        HealthStatus(
            "market_data.trades", 1200, 1190, 3, 900, 3145728, 21, 2048, datetime(2024, 8, 8, 23, 59, tzinfo=UTC)
        )
    ]
    assert report.other == []  # not repeated among the other series
    console = Console(record=True, width=160, color_system=None)
    console.print(render(report))
    lines = {" ".join(line.replace("│", " ").split()) for line in console.export_text().splitlines()}
    assert "market_data.trades 1,200 1,190 3 900 3.0 MiB 21 2.0 KiB 2024-08-08 23:59:00" in lines


def test_not_an_exposition_page_is_a_scrape_error() -> None:
    with pytest.raises(ScrapeError, match="not Prometheus text exposition"):
        parse_exposition("k2_x{venue=binance} 1\n", url="http://h/metrics")


@pytest.fixture
def endpoint() -> Iterator[str]:
    server: WSGIServer = serve_metrics(0)
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def test_scrape_reads_this_process_registry_over_http(endpoint: str) -> None:
    WS_CONNECTED.labels(venue="statusvenue").set(1)
    WS_MESSAGES.labels(venue="statusvenue").inc(42)
    LAST_EVENT_TIME.labels(venue="statusvenue", symbol="XYZUSDT").set(T0)
    LAKE_ROWS_WRITTEN.labels(table="status.table").inc(7)
    LAKE_COMMIT_SECONDS.labels(table="status.table").observe(0.25)
    LAKE_LAST_COMMIT_TIME.labels(table="status.table").set(T0)
    report = build_report(scrape(endpoint))
    feed = next(f for f in report.feeds if f.venue == "statusvenue")
    assert feed == FeedStatus("statusvenue", connected=True, frames=42, frames_per_s=None, reconnects=0)
    symbol = next(s for s in report.symbols if s.venue == "statusvenue")
    assert (symbol.symbol, symbol.last_event) == ("XYZUSDT", datetime(2024, 8, 9, tzinfo=UTC))
    table = next(t for t in report.tables if t.table == "status.table")
    assert (table.rows, table.commits, table.mean_commit_s) == (7, 1, 0.25)


def test_status_command_shows_the_view_and_fails_cleanly_when_unreachable(endpoint: str) -> None:
    WS_CONNECTED.labels(venue="clivenue").set(0)
    result = CliRunner().invoke(app, ["status", "--url", endpoint, "--interval", "0.05", "--count", "1"])
    assert result.exit_code == 0, result.output
    assert "K2 status " + endpoint in result.output
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in result.output.splitlines()]
    assert ["clivenue", "DOWN", "0", "-", "0"] in rows

    dead = CliRunner().invoke(app, ["status", "--url", "http://127.0.0.1:9/metrics", "--count", "1"])
    assert dead.exit_code == 1
    assert "error: cannot read http://127.0.0.1:9/metrics" in dead.output

    bad = CliRunner().invoke(app, ["status", "--url", "file:///etc/passwd", "--count", "1"])
    assert bad.exit_code == 1
    assert "not an http(s) URL" in bad.output


def test_every_series_name_the_view_reads_is_declared() -> None:
    """The view refers to series by name; a renamed metric must not silently empty a section."""
    import ast

    import k2.services.status as status
    from tests.observability import declared_series

    names = set(declared_series()) | {n.removesuffix("_total").removesuffix("_count") for n in declared_series()}
    tree = ast.parse(Path(status.__file__).read_text())
    used = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and str(n.value).startswith("k2_")}
    assert "k2_lake_commit_duration_seconds_count" in used
    assert sorted(used - names - {"k2_"}) == []
