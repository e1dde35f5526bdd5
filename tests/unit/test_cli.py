"""The `k2` command line: exit codes and output, on real data (the demo's warehouse)."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from k2.cli import app
from k2.config import LakeSettings
from k2.emulator.server import EmulatorThread, ReplayConfig
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.schema.kinds import RecordKind
from tests.conftest import eventually

runner = CliRunner()


@pytest.fixture(scope="module")
def demo_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    warehouse = tmp_path_factory.mktemp("demo") / "k2-demo"
    result = runner.invoke(app, ["demo", "--speed", "max", "--warehouse", str(warehouse)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "166,351 frames -> 34,419 trades and 131,932 quotes committed" in text
    assert "Rows per symbol" in text and "1-minute OHLCV" in text and "Spread" in text
    assert "first trades with the quote prevailing" in text and "Query further" in text
    return warehouse


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_summary_shows_rows_and_last_prices(demo_warehouse: Path) -> None:
    query = "SELECT symbol, count(*) AS n, bool_and(is_sample_data) AS sample FROM trades GROUP BY 1 ORDER BY 1"
    result = runner.invoke(app, ["query", "sql", "--warehouse", str(demo_warehouse), "--format", "csv", query])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["symbol,n,sample", "BTCUSDT,19904,True", "ETHUSDT,14515,True"]


def test_query_trades_filters_by_symbol_and_time(demo_warehouse: Path) -> None:
    result = runner.invoke(
        app,
        ["query", "trades", "--warehouse", str(demo_warehouse), "--symbol", "BTCUSDT", "--start",
         "2024-08-08T23:54:15Z", "--end", "2024-08-08T23:54:15.620Z", "--format", "csv"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("message_id,trade_id,symbol")
    # one trade at 23:54:15.342, nine at .617 (end is exclusive at .620), in time order
    assert [int(line.split(",")[1]) for line in lines[1:]] == list(range(3735683259, 3735683269))
    assert "61837.63" in lines[1]


def test_query_ohlcv_and_vwap(demo_warehouse: Path) -> None:
    bars = runner.invoke(app, ["query", "ohlcv", "--warehouse", str(demo_warehouse), "--symbol", "ETHUSDT",
                               "--interval", "5m", "--format", "csv"])  # fmt: skip
    assert bars.exit_code == 0, bars.output
    buckets = [line.split(",")[0] for line in bars.output.splitlines()[1:]]
    assert buckets == [
        "2024-08-08 23:50:00",
        "2024-08-08 23:55:00",
        "2024-08-09 00:00:00",
        "2024-08-09 00:05:00",
    ]
    vwap = runner.invoke(app, ["query", "vwap", "--warehouse", str(demo_warehouse), "--symbol", "BTCUSDT"])
    assert vwap.exit_code == 0, vwap.output
    assert vwap.output.strip().startswith("616")


def test_sql_that_writes_is_refused_with_one_line(demo_warehouse: Path) -> None:
    result = runner.invoke(app, ["query", "sql", "--warehouse", str(demo_warehouse), "DROP TABLE trades"])
    assert result.exit_code == 1
    assert "error:" in result.output and "Traceback" not in result.output


def test_bad_time_is_a_clean_error(demo_warehouse: Path) -> None:
    result = runner.invoke(app, ["query", "trades", "--warehouse", str(demo_warehouse), "--start", "yesterday"])
    assert result.exit_code == 1
    assert "not an ISO-8601 time: 'yesterday'" in result.output


def test_run_against_an_unreachable_exchange_fails_with_one_line(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{_closed_port()}"
    result = runner.invoke(app, ["run", "--ws-url", url, "--connect-attempts", "2", "--warehouse", str(tmp_path)])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert "127.0.0.1" in errors[0]


def _committed(warehouse: Path) -> int:
    if not (warehouse / "catalog.db").exists():
        return 0
    lake = LakeSettings(warehouse=warehouse)
    snapshot = load_or_create_table(open_catalog(lake), lake, RecordKind.TRADES).current_snapshot()
    return 0 if snapshot is None else int(snapshot.summary.additional_properties.get("total-records", 0))  # type: ignore[union-attr]


def test_run_streams_from_a_compatible_url_until_interrupted(tmp_path: Path) -> None:
    """`k2 run` runs until a signal (here SIGINT, sent once every trade is committed), then exits 0."""
    warehouse = tmp_path / "w"
    with EmulatorThread(ReplayConfig(speed=None)) as emu:

        def interrupt_once_committed() -> None:
            try:
                eventually(lambda: emu.finished and _committed(warehouse) >= 34_419, timeout=120, interval=0.2)
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # caught by `k2 run`'s handler: a clean stop

        thread = threading.Thread(target=interrupt_once_committed)
        thread.start()
        result = runner.invoke(app, ["run", "--ws-url", emu.url, "--sample", "--warehouse", str(warehouse)])
        thread.join()
    assert result.exit_code == 0, result.output
    assert "34419 frames, 34419 trades, 0 quotes, 0 rejected, 34419 rows" in " ".join(result.output.split())


READ_COMMANDS = [
    ["query", "trades"],
    ["query", "ohlcv", "--symbol", "BTCUSDT"],
    ["query", "vwap", "--symbol", "BTCUSDT"],
    ["query", "sql", "SELECT count(*) FROM trades"],
    ["query", "quotes"],
    ["query", "spread"],
    ["query", "asof"],
    ["quality"],
]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_read_commands_on_a_missing_warehouse_say_so_and_create_nothing(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "no-such-warehouse"
    result = runner.invoke(app, [*command, "--warehouse", str(missing)])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == [
        f"error: no K2 table in {missing}: there is no catalog there (check --warehouse)"
    ]
    assert not missing.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_read_commands_on_a_warehouse_without_the_table_say_so_and_create_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    lake = LakeSettings(warehouse=tmp_path / "w")
    open_catalog(lake).engine.dispose()  # a catalog with K2's namespace, but no table
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = runner.invoke(app, [*command, "--warehouse", str(lake.warehouse)])
    assert result.exit_code == 1, result.output
    want = f"error: no table market_data.trades in {lake.warehouse}: nothing was written there (check --warehouse)"
    assert result.output.splitlines() == [want]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_an_unexpected_error_is_one_line_naming_the_saved_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def buggy(*args: object, **kwargs: object) -> None:
        raise KeyError("a [bracketed] key")

    monkeypatch.setattr("k2.services.quality_report.quality_report", buggy)
    result = runner.invoke(app, ["quality", "--warehouse", str(tmp_path)])
    assert result.exit_code == 1, result.output
    (line,) = result.output.splitlines()
    match = re.fullmatch(r"error: unexpected KeyError: '?a \[bracketed\] key'? \(traceback in (\S+)\)", line)
    assert match is not None, line
    saved = Path(match.group(1))
    assert saved.read_text().rstrip().endswith("KeyError: 'a [bracketed] key'")
    saved.unlink()


def test_invalid_symbols_are_a_config_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "--symbols", "BTC-USDT", "--warehouse", str(tmp_path)])
    assert result.exit_code == 1
    assert "invalid" in result.output and "BTC-USDT" in result.output
