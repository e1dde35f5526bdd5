"""Several venues in one process (embedded): Binance and the test-only AGGTEST (``tests/aggtest.py``), each
replayed by its own emulator instance, run by one `k2 run` into one table per kind.

Expected values come from the two recordings and the fault plans, never from the pipeline under test:
each venue's table rows exactly once, per-venue completeness in `k2 quality`, each venue in `k2 status`,
1-minute OHLCV of BTC/USDT per venue side by side, and a two-venue restart that keeps both venues' state
exact (platform sequences and sequence tracking are per venue).
"""

from __future__ import annotations

import asyncio
import csv
import io
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
from typer.testing import CliRunner

from k2.cli import app
from k2.cliutil import cell
from k2.config import FeedSettings, K2Settings
from k2.devservices.common import free_port
from k2.emulator.faults import Faults
from k2.emulator.server import BinanceEmulator, EmulatorThread, ReplayConfig
from k2.errors import ScrapeError
from k2.feed.feed import VenueFeed
from k2.feed.runner import FeedRunner
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.lake.sequence_state import recover_state
from k2.query.engine import QueryEngine
from k2.schema.kinds import RecordKind
from k2.services.pipeline import EmbeddedPipeline
from k2.services.quality_report import quality_report_dicts
from k2.services.status import StatusReport, build_report, scrape
from tests import aggtest
from tests.conftest import eventually, eventually_async
from tests.integration.test_completeness import (
    FAULT_PLAN,
    TOTAL,
    _events,
    _recording,
    _settings,
    assert_restart_gap_resolved,
    withheld_trades,
)
from tests.integration.test_restart_state import run_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
AGG_TOTAL = 1_910
AGG_FAULTS = Faults(duplicate_every=50, reorder_every=70, disconnect_after=(1_000,))


def _trades(settings: K2Settings) -> list[dict[str, Any]]:
    return (
        QueryEngine.from_settings(settings)
        .sql(
            "SELECT exchange, symbol, instrument, trade_id, source_sequence, price, quantity, platform_sequence, "
            "vendor_data['backfilled'] AS backfilled FROM trades"
        )
        .to_pylist()
    )


def assert_binance_exact(rows: list[dict[str, Any]], backfilled: set[tuple[str, str]]) -> None:
    expected = {(d["s"], str(d["t"])): d for d in _recording()}
    mine = [r for r in rows if r["exchange"] == "BINANCE"]
    keys = Counter((r["symbol"], r["trade_id"]) for r in mine)
    assert set(keys) == set(expected) and len(mine) == TOTAL, "every Binance trade exactly once"
    for r in mine:
        d = expected[(r["symbol"], r["trade_id"])]
        assert (r["price"], r["quantity"]) == (Decimal(d["p"]), Decimal(d["q"]))
        assert r["instrument"] == r["symbol"].removesuffix("USDT") + "/USDT"
    assert {(r["symbol"], r["trade_id"]) for r in mine if r["backfilled"] == "true"} == backfilled


def assert_aggtest_exact(rows: list[dict[str, Any]]) -> None:
    expected = {(d["s"], d["a"]): d for d in aggtest.recorded()}
    mine = [r for r in rows if r["exchange"] == "AGGTEST"]
    keys = Counter((r["symbol"], r["source_sequence"]) for r in mine)
    assert set(keys) == set(expected) and len(mine) == AGG_TOTAL, "every AGGTEST trade exactly once"
    for r in mine:
        d = expected[(r["symbol"], r["source_sequence"])]
        assert (r["price"], r["quantity"], r["instrument"]) == (
            Decimal(d["p"]), Decimal(d["q"]), d["s"].removesuffix("USDT") + "/USDT",
        )  # fmt: skip


def _platform_sequences(rows: list[dict[str, Any]], exchange: str) -> list[int]:
    return sorted(r["platform_sequence"] for r in rows if r["exchange"] == exchange)


# --- `k2 run --venues binance,aggtest`, the command line ---------------------------------------------------
def _start_run(
    settings: K2Settings, tmp_path: Path, binance: EmulatorThread, agg: EmulatorThread, port: int
) -> subprocess.Popen[bytes]:
    env = run_env(settings, tmp_path, K2_QUALITY__REST_WEIGHT_PER_MINUTE="60000")
    args = [
        "run", "--venues", "binance,aggtest", "--kinds", "trades",
        "--symbols", "binance:BTCUSDT,ETHUSDT", "--symbols", "aggtest:BTC/USDT,ETHUSDT,dot/usdt",
        "--ws-url", f"binance:{binance.url}", "--ws-url", f"aggtest:{agg.url}",
        "--rest-url", f"binance:{binance.emulator.http_url}", "--sample", "--metrics-port", str(port),
    ]  # fmt: skip
    with (tmp_path / "run.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", "import tests.aggtest as a; a.main()", *args],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _status(url: str) -> StatusReport:
    """The process's metrics as `k2 status` reads them (an AssertionError while it does not answer yet)."""
    try:
        return build_report(scrape(url))
    except ScrapeError as exc:
        raise AssertionError(str(exc)) from exc


def _csv(args: list[str]) -> list[dict[str, str]]:
    """Rows a `k2` command prints with ``-f csv``."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return list(csv.DictReader(io.StringIO(result.output)))


def _stored_rows(settings: K2Settings) -> int:
    table = load_or_create_table(open_catalog(settings.lake), settings.lake, RecordKind.TRADES, evolve=False)
    snapshot = table.current_snapshot()
    return 0 if snapshot is None or snapshot.summary is None else int(snapshot.summary["total-records"] or 0)


def test_k2_run_with_two_venues_stores_each_exactly_and_reports_each(tmp_path: Path) -> None:
    """One `k2 run` process, two venues, two emulators: Binance with the acceptance faults (duplicates,
    reorders, withheld ranges backfilled over REST with 429/503, disconnects), AGGTEST with duplicates,
    reorders and a disconnect."""
    aggtest.register()  # for this process's `k2 quality` / `k2 query` (the run registers it in its own)
    settings = _settings(tmp_path)
    port = free_port()
    with (
        EmulatorThread(ReplayConfig(speed=None, faults=FAULT_PLAN)) as binance,
        EmulatorThread(ReplayConfig(recording=aggtest.RECORDING, speed=None, faults=AGG_FAULTS)) as agg,
    ):
        proc = _start_run(settings, tmp_path, binance, agg, port)
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            # `k2 status` shows each venue's feed.
            eventually(lambda: {f.venue for f in _status(url).feeds} == {"binance", "aggtest"}, 60, 0.2)
            status = CliRunner().invoke(app, ["status", "--url", url, "--interval", "0.2", "--count", "1"])
            assert status.exit_code == 0, status.output
            assert "binance" in status.output and "aggtest" in status.output
            eventually(lambda: proc.poll() is None and _stored_rows(settings) == TOTAL + AGG_TOTAL, 180, 0.2)
            report = _status(url)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 0, (tmp_path / "run.log").read_text()[-3_000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        injected_binance, injected_agg = dict(binance.emulator.injected), dict(agg.emulator.injected)
    assert "stopped:" in (tmp_path / "run.log").read_text()
    frames = {f.venue: f.frames for f in report.feeds}
    assert frames["aggtest"] >= AGG_TOTAL and frames["binance"] >= TOTAL - 1_543
    normalized = {dict(s.labels)["venue"]: s.value for s in report.records}
    assert normalized["aggtest"] == AGG_TOTAL + injected_agg["duplicate"]  # parsed, then duplicates dropped

    rows = _trades(settings)
    assert_binance_exact(rows, withheld_trades(_recording()))
    assert_aggtest_exact(rows)
    assert _platform_sequences(rows, "BINANCE") == list(range(1, TOTAL + 1))  # dense, per venue
    assert _platform_sequences(rows, "AGGTEST") == list(range(1, AGG_TOTAL + 1))

    # Completeness per venue, symbol (and day): `k2 quality` rows of each venue.
    report_rows = quality_report_dicts(settings)
    assert {(r["exchange"], r["symbol"]) for r in report_rows} == {
        ("BINANCE", "BTCUSDT"), ("BINANCE", "ETHUSDT"), ("AGGTEST", "BTCUSDT"), ("AGGTEST", "ETHUSDT"),
        ("AGGTEST", "DOTUSDT"),
    }  # fmt: skip
    agg_rows = [r for r in report_rows if r["exchange"] == "AGGTEST"]
    assert sum(r["trades"] for r in agg_rows) == AGG_TOTAL and sum(r["missing"] for r in agg_rows) == 0
    assert sum(r["duplicates_dropped"] for r in agg_rows) == injected_agg["duplicate"]
    binance_rows = [r for r in report_rows if r["exchange"] == "BINANCE"]
    assert sum(r["backfilled_trades"] for r in binance_rows) == 1_543 == injected_binance["withheld"]
    assert sum(r["duplicates_dropped"] for r in binance_rows) == injected_binance["duplicate"]
    assert sum(r["gaps_found"] for r in binance_rows) == sum(r["gaps_backfilled"] for r in binance_rows) == 5
    warehouse = str(settings.lake.warehouse)
    quality = _csv(["quality", "--warehouse", warehouse, "--exchange", "aggtest", "-f", "csv"])
    assert {(r["exchange"], r["symbol"], r["day"]) for r in quality} == {
        ("AGGTEST", s, "2021-04-04") for s in ("BTCUSDT", "ETHUSDT", "DOTUSDT")
    }

    # One query comparing the venues: 1-minute bars of BTC/USDT per venue, side by side.
    bars = _csv(["query", "ohlcv", "--instrument", "BTC/USDT", "--warehouse", warehouse, "-f", "csv"])
    assert list(bars[0]) == ["exchange", "bucket", "open", "high", "low", "close", "volume", "trades", "vwap"]
    engine = QueryEngine.from_settings(settings)
    for exchange in ("BINANCE", "AGGTEST"):
        mine = [{k: v for k, v in b.items() if k != "exchange"} for b in bars if b["exchange"] == exchange]
        alone = engine.ohlcv("BTCUSDT", "1m", exchange=exchange).to_pylist()
        assert mine == [{k: cell(v) for k, v in a.items()} for a in alone] and mine
        trades = sum(1 for r in rows if (r["exchange"], r["symbol"]) == (exchange, "BTCUSDT"))
        assert sum(int(b["trades"]) for b in mine) == trades


# --- a two-venue restart --------------------------------------------------------------------------------
def two_venues(settings: K2Settings, binance: BinanceEmulator, agg: BinanceEmulator) -> K2Settings:
    source = settings.source.model_copy(
        update={
            "venues": ("binance", "aggtest"),
            "kinds": ("trades",),
            "feeds": {
                "binance": FeedSettings(symbols=("BTCUSDT", "ETHUSDT"), ws_url=binance.url, rest_url=binance.http_url),
                "aggtest": FeedSettings(symbols=("BTC/USDT", "ETHUSDT", "DOTUSDT"), ws_url=agg.url),
            },
        }
    )
    return settings.model_copy(update={"source": source})


class _Service(Protocol):
    """What the embedded pipeline and `k2 ingest`'s service share for these tests."""

    feeds: list[VenueFeed]
    runner: FeedRunner

    async def run(self) -> Any: ...
    def stop(self) -> None: ...


S = TypeVar("S", bound=_Service)


def _embedded(settings: K2Settings) -> EmbeddedPipeline:
    return EmbeddedPipeline(settings, is_sample_data=True)


async def run_both(
    settings: K2Settings, binance_faults: Faults, agg_faults: Faults, make: Callable[[K2Settings], S]
) -> S:
    """Both venues replayed into one service (``make(settings)``) until everything sent is handled and
    Binance's gaps are backfilled; then stopped."""
    async with (
        BinanceEmulator(ReplayConfig(speed=None, faults=binance_faults)) as binance,
        BinanceEmulator(ReplayConfig(recording=aggtest.RECORDING, speed=None, faults=agg_faults)) as agg,
    ):
        pipeline = make(two_venues(settings, binance, agg))
        run = asyncio.create_task(pipeline.run())
        by_name = {f.name: f for f in pipeline.feeds}
        feeds = {"binance": (by_name["binance"], binance), "aggtest": (by_name["aggtest"], agg)}

        async def settled() -> bool:
            assert not run.done(), "stopped early"
            for feed, emu in feeds.values():
                trades = feed.trades
                assert trades is not None
                if not emu.finished.is_set() or feed.frames < emu.frames_sent or trades.backfilling:
                    return False
                if any(trades.tracker.holes(k) for k in trades.tracker.streams()):
                    return False
            return pipeline.runner.backlog_frames() == 0

        await eventually_async(settled, timeout=120)
        pipeline.stop()
        await run
    return pipeline


def test_a_two_venue_restart_keeps_both_venues_exact(tmp_path: Path) -> None:
    """Run 1 stops after Binance frame 10,000 and AGGTEST frame 1,000. Run 2: Binance's stream goes on
    from frame 15,001 (its restart gap is found from the table and backfilled over REST); AGGTEST replays
    everything (its first 1,000 are duplicates by the recorded state). Run 3 replays both again: nothing
    new. Each venue keeps its own platform sequence and sequence state in the shared commits."""
    aggtest.register()
    settings = _settings(tmp_path)
    asyncio.run(
        run_both(settings, Faults(withhold=((10_001, TOTAL),)), Faults(withhold=((1_001, AGG_TOTAL),)), _embedded)
    )
    first = _trades(settings)
    assert Counter(r["exchange"] for r in first) == {"BINANCE": 10_000, "AGGTEST": 1_000}

    second = asyncio.run(run_both(settings, Faults(withhold=((1, 15_000),)), Faults(), _embedded))
    rows = _trades(settings)
    down = {(d["s"], str(d["t"])) for d in _recording()[10_000:15_000]}
    assert_binance_exact(rows, down)
    assert_aggtest_exact(rows)
    assert_restart_gap_resolved(settings, down)
    assert not [e for e in _events(settings) if e["exchange"] == "AGGTEST" and e["kind"] == "GAP"]
    venues = second.get_stats()["venues"]
    assert venues["aggtest"]["quality"]["trades"]["duplicates_dropped"] == 1_000
    assert venues["binance"]["quality"]["trades"]["duplicates_dropped"] == 0
    assert _platform_sequences(rows, "BINANCE") == list(range(1, TOTAL + 1))
    assert _platform_sequences(rows, "AGGTEST") == list(range(1, AGG_TOTAL + 1))
    table = load_or_create_table(open_catalog(settings.lake), settings.lake, RecordKind.TRADES)
    for exchange in ("BINANCE", "AGGTEST"):  # each venue's exact state is in the newest commit
        assert recover_state(table, exchange).reason == "recorded"
    summary = table.current_snapshot().summary  # type: ignore[union-attr]
    assert {k for k in summary.additional_properties if k.startswith("k2.platform-sequence.")} >= {
        "k2.platform-sequence.binance", "k2.platform-sequence.aggtest",
    }  # fmt: skip

    third = asyncio.run(run_both(settings, Faults(), Faults(), _embedded))
    assert third.stats.rows_committed == 0
    venues = third.get_stats()["venues"]
    assert venues["binance"]["quality"]["trades"]["duplicates_dropped"] == TOTAL
    assert venues["aggtest"]["quality"]["trades"]["duplicates_dropped"] == AGG_TOTAL
