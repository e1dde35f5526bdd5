"""The quality report: pure aggregation on hand-built rows, and `k2 quality` over a real warehouse."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pyarrow as pa
from typer.testing import CliRunner

from k2.cli import app
from k2.config import K2Settings, LakeSettings
from k2.feed.stamp import parse_canonical
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.lake.writer import TableWriter
from k2.quality.records import QualityEventRow, events_batch
from k2.quality.report import REPORT_COLUMNS, build_report
from k2.schema.kinds import RecordKind
from k2.schema.quality_event import EventKind, EventStatus
from k2.sources.base import RawFrame
from tests.conftest import rest_trades

DAY_US = 86_400_000_000
T0 = 19_943 * DAY_US  # 2024-08-08 00:00 UTC


def _ws_frame(trade_id: int, t_us: int) -> RawFrame:
    data = {
        "e": "trade",
        "E": t_us // 1000,
        "s": "BTCUSDT",
        "t": trade_id,
        "p": "100.5",
        "q": "1",
        "T": t_us // 1000,
        "m": False,
    }
    return RawFrame(json.dumps({"stream": "btcusdt@trade", "data": data}).encode(), t_us)


def _trades() -> pa.Table:
    """BTCUSDT ids 10..14 on day 1 with 12 backfilled, 20 and 22 on day 2 (21 missing)."""
    frames = [_ws_frame(i, T0 + i * 1000) for i in (10, 11, 13, 14)] + [_ws_frame(i, T0 + DAY_US + i) for i in (20, 22)]
    ws = parse_canonical("binance", frames, symbols=["BTCUSDT", "ETHUSDT"], first_sequence=1, is_sample_data=False)
    rest = rest_trades(
        b'[{"id":12,"price":"100.5","qty":"1","quoteQty":"100.5","time":%d,"isBuyerMaker":true,"isBestMatch":true}]'
        % ((T0 + 12_000) // 1000),
        "BTCUSDT", received_at_us=T0, first=9, sample=False)  # fmt: skip
    assert rest.batch is not None
    return pa.Table.from_batches([*ws.records.values(), rest.batch])


def _event(event_id: str, kind: EventKind, status: EventStatus, count: int, at: int, day: int = 0) -> QualityEventRow:
    t = T0 + day * DAY_US
    return QualityEventRow(event_id, "BINANCE", "BTCUSDT", "trade", kind, 1, 1, count, t, t, status, t + at)


def _events() -> pa.Table:
    rows = [
        _event("g1", EventKind.GAP, EventStatus.OPEN, 1, 0),
        _event("g1", EventKind.GAP, EventStatus.RESOLVED, 1, 5),
        _event("g2", EventKind.GAP, EventStatus.OPEN, 1, 0, day=1),
        _event("g2", EventKind.GAP, EventStatus.UNRECOVERABLE, 1, 9, day=1),
        _event("d1", EventKind.DUPLICATE, EventStatus.RECORDED, 3, 0),
        _event("d2", EventKind.DUPLICATE, EventStatus.RECORDED, 2, 0),
        _event("o1", EventKind.OUT_OF_ORDER, EventStatus.RECORDED, 1, 0, day=1),
        _event("p1", EventKind.PRICE_JUMP, EventStatus.RECORDED, 4, 0),
        _event("s1", EventKind.STALE_FEED, EventStatus.RECORDED, 1, 0, day=1),
    ]
    return pa.Table.from_batches([events_batch(rows)])


EXPECTED = [
    {"day": date(2024, 8, 8), "exchange": "BINANCE", "symbol": "BTCUSDT", "trades": 5, "first_id": 10, "last_id": 14,
     "expected": 5, "missing": 0, "backfilled_trades": 1, "gaps_found": 1, "gaps_backfilled": 1,
     "gaps_unrecoverable": 0, "gaps_open": 0, "duplicates_dropped": 5, "out_of_order": 0, "resets": 0,
     "price_jump": 4, "timestamp_future": 0, "timestamp_lag": 0, "stale_feed": 0},
    {"day": date(2024, 8, 9), "exchange": "BINANCE", "symbol": "BTCUSDT", "trades": 2, "first_id": 20, "last_id": 22,
     "expected": 3, "missing": 1, "backfilled_trades": 0, "gaps_found": 1, "gaps_backfilled": 0,
     "gaps_unrecoverable": 1, "gaps_open": 0, "duplicates_dropped": 0, "out_of_order": 1, "resets": 0,
     "price_jump": 0, "timestamp_future": 0, "timestamp_lag": 0, "stale_feed": 1},
]  # fmt: skip


def test_build_report_per_symbol_per_day() -> None:
    report = build_report(_trades(), _events())
    assert tuple(report.column_names) == REPORT_COLUMNS
    assert report.to_pylist() == EXPECTED


def test_k2_quality_command(tmp_path: Path) -> None:
    settings = K2Settings(lake=LakeSettings(warehouse=tmp_path / "wh"))
    catalog = open_catalog(settings.lake)
    load_or_create_table(catalog, settings.lake, RecordKind.TRADES)
    load_or_create_table(catalog, settings.lake, RecordKind.QUALITY_EVENTS)
    TableWriter(catalog, ("market_data", "trades"), settings.lake).append(_trades())
    TableWriter(catalog, ("market_data", "quality_events"), settings.lake).append(_events())

    result = CliRunner().invoke(app, ["quality", "--warehouse", str(tmp_path / "wh"), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        ",".join(REPORT_COLUMNS),
        *(",".join(str(r[c]) for c in REPORT_COLUMNS) for r in EXPECTED),
    ]
    table = CliRunner().invoke(app, ["quality", "--warehouse", str(tmp_path / "wh"), "--symbol", "ethusdt"])
    assert table.exit_code == 0 and "quality report" in table.output and "BTCUSDT" not in table.output

    one = CliRunner().invoke(app, ["quality", "-w", str(tmp_path / "wh"), "--day", "2024-08-09", "-f", "csv"])
    assert one.exit_code == 0, one.output
    lines = one.output.splitlines()
    assert lines[0] == ",".join(REPORT_COLUMNS)
    assert lines[1] == "2024-08-09,BINANCE,BTCUSDT,2,20,22,3,1,0,1,0,1,0,0,1,0,0,0,0,1"

    bad = CliRunner().invoke(app, ["quality", "-w", str(tmp_path / "wh"), "--day", "yesterday"])
    assert bad.exit_code == 1 and "not a day (YYYY-MM-DD): 'yesterday'" in bad.output
