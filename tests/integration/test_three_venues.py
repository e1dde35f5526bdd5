"""Acceptance: `k2 run --venues binance,coinbase,kraken` (embedded, one real subprocess) against three
emulators, each replaying its venue's bundled real session (Binance: trades and bookTicker of
BTCUSDT/ETHUSDT; Coinbase Exchange: matches and ticker of ten products; Kraken WebSocket v2: trades of
BTC/USDT and tickers of BTC/USD) with duplicates, reorders and disconnects.

Expected values come from the recordings, never from the pipeline under test: one table per kind holding
every venue's rows exactly once, `k2 quality` completeness per venue, and one query comparing the venues
(trades and quotes per instrument per venue).
"""

from __future__ import annotations

import csv
import io
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from k2.cli import app
from k2.config import K2Settings, LakeSettings
from k2.devservices.common import free_port
from k2.emulator.coinbase import CoinbaseProtocol
from k2.emulator.faults import Faults
from k2.emulator.kraken import BUNDLED_KRAKEN, KrakenProtocol
from k2.emulator.recording import BUNDLED_BINANCE_SESSION, BUNDLED_COINBASE_SESSION
from k2.emulator.server import EmulatorThread, ReplayConfig
from k2.query.engine import QueryEngine
from tests.conftest import eventually
from tests.integration.test_coinbase import PRODUCTS
from tests.integration.test_coinbase import recorded as coinbase_recorded
from tests.integration.test_kraken import ACKS as KRAKEN_ACKS
from tests.integration.test_kraken import SYMBOLS as KRAKEN_SYMBOLS
from tests.integration.test_kraken import recorded_tickers as kraken_tickers
from tests.integration.test_kraken import recorded_trades as kraken_trades
from tests.integration.test_quotes import _recorded as binance_recorded
from tests.integration.test_restart_state import run_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BINANCE_FAULTS = Faults(duplicate_every=997, reorder_every=1_009, disconnect_after=(40_000,))
COINBASE_FAULTS = Faults(duplicate_every=50, reorder_every=70, disconnect_after=(120,))
KRAKEN_FAULTS = Faults(duplicate_every=7, reorder_every=11, disconnect_after=(150, 400))
VENUES = ("binance", "coinbase", "kraken")


def expected_keys() -> dict[str, set[tuple[str, str, str]]]:
    """(exchange, symbol, venue id) of every recorded trade and quote, per kind (Kraken's tickers carry no
    id: K2 numbers them in receive order, so they are checked by value below)."""
    cb_trades = coinbase_recorded(("match", "last_match"))
    cb_tickers = coinbase_recorded(("ticker",))
    return {
        "trades": {("BINANCE", str(d["s"]), str(d["t"])) for d in binance_recorded("@trade")}
        | {("COINBASE", m["product_id"], str(m["trade_id"])) for m in cb_trades}
        | {("KRAKEN", "BTC/USDT", str(trade_id)) for trade_id in kraken_trades()},
        "quotes": {("BINANCE", str(d["s"]), str(d["u"])) for d in binance_recorded("@bookTicker")}
        | {("COINBASE", m["product_id"], str(m["sequence"])) for m in cb_tickers},
    }


def _instrument(exchange: str, symbol: str) -> str:
    if exchange == "KRAKEN":
        return symbol
    return symbol.replace("-", "/") if exchange == "COINBASE" else symbol.removesuffix("USDT") + "/USDT"


def _start_run(settings: K2Settings, tmp_path: Path, emulators: dict[str, EmulatorThread]) -> subprocess.Popen[bytes]:
    env = run_env(settings, tmp_path, K2_LAKE__FLUSH_ROWS="20000")
    symbols = {"binance": "BTCUSDT,ETHUSDT", "coinbase": ",".join(PRODUCTS), "kraken": ",".join(KRAKEN_SYMBOLS)}
    args = ["run", "--venues", ",".join(VENUES), "--kinds", "trades,quotes", "--sample"]
    for venue, emu in emulators.items():
        args += ["--symbols", f"{venue}:{symbols[venue]}", "--ws-url", f"{venue}:{emu.url}"]
        args += ["--rest-url", f"{venue}:{emu.emulator.http_url}"]
    args += ["--metrics-port", str(free_port())]
    with (tmp_path / "run.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "k2.cli", *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )


def _csv(args: list[str]) -> list[dict[str, str]]:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return list(csv.DictReader(io.StringIO(result.output)))


def _count(settings: K2Settings, kind: str) -> int:
    if not (settings.lake.warehouse / "catalog.db").exists():
        return 0
    with QueryEngine.from_settings(settings) as engine:
        return int(engine.sql(f"SELECT count(*) AS n FROM {kind}").to_pylist()[0]["n"])  # kind: a code constant


def test_k2_run_three_venues_one_table_per_kind_exact_per_venue(tmp_path: Path) -> None:
    expected = expected_keys()
    tickers = kraken_tickers()
    want_rows = {"trades": len(expected["trades"]), "quotes": len(expected["quotes"]) + len(tickers)}
    warehouse = tmp_path / "warehouse"
    settings = K2Settings(lake=LakeSettings(warehouse=warehouse))
    coinbase_config = ReplayConfig(
        protocol=CoinbaseProtocol(), recording=BUNDLED_COINBASE_SESSION, speed=None, faults=COINBASE_FAULTS
    )
    # Kraken's replay waits for K2's subscriptions to be acknowledged (its status, one ack per channel and
    # symbol): a live Kraken's tickers sent before that would be missed, and no REST call brings them back.
    kraken_config = ReplayConfig(
        protocol=KrakenProtocol(), recording=BUNDLED_KRAKEN, speed=None, faults=KRAKEN_FAULTS, hold_at=1
    )
    with (
        EmulatorThread(ReplayConfig(recording=BUNDLED_BINANCE_SESSION, speed=None, faults=BINANCE_FAULTS)) as binance,
        EmulatorThread(coinbase_config) as coinbase,
        EmulatorThread(kraken_config) as kraken,
    ):
        emulators = {"binance": binance, "coinbase": coinbase, "kraken": kraken}
        proc = _start_run(settings, tmp_path, emulators)
        try:

            def subscribed() -> bool:
                assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3_000:]
                return kraken.emulator.control_sent >= 1 + KRAKEN_ACKS

            eventually(subscribed, timeout=60, interval=0.1)
            kraken.release()

            def stored() -> bool:
                assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3_000:]
                return all(_count(settings, kind) == n for kind, n in want_rows.items())

            eventually(stored, timeout=300, interval=1.0)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 0, (tmp_path / "run.log").read_text()[-3_000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        injected = {venue: dict(emu.emulator.injected) for venue, emu in emulators.items()}
    assert all(injected[v]["duplicate"] > 0 and injected[v]["reorder"] > 0 for v in injected), injected

    # One table per kind, both venues' rows in it, each recorded trade and quote exactly once, with its instrument.
    with QueryEngine.from_settings(settings) as engine:
        trades = engine.sql("SELECT exchange, symbol, trade_id AS id, instrument FROM trades").to_pylist()
        quotes = engine.sql(
            "SELECT exchange, symbol, CAST(source_sequence AS VARCHAR) AS id, instrument, bid_price, ask_price "
            "FROM quotes ORDER BY ingestion_timestamp"
        ).to_pylist()
        # One query comparing the venues: trades and quotes per instrument, per venue.
        compared = engine.sql(
            "SELECT t.exchange, t.instrument, t.trades, q.quotes FROM "
            "(SELECT exchange, instrument, count(*) AS trades FROM trades GROUP BY ALL) t JOIN "
            "(SELECT exchange, instrument, count(*) AS quotes FROM quotes GROUP BY ALL) q "
            "USING (exchange, instrument) ORDER BY t.exchange, t.instrument"
        ).to_pylist()
    kraken_quotes = [r for r in quotes if r["exchange"] == "KRAKEN"]
    assert sorted((r["symbol"], r["bid_price"], r["ask_price"]) for r in kraken_quotes) == sorted(
        ("BTC/USD", t["bid"], t["ask"]) for t in tickers
    )
    keyed_quotes = [r for r in quotes if r["exchange"] != "KRAKEN"]
    for kind, rows in (("trades", trades), ("quotes", keyed_quotes)):
        keys = Counter((r["exchange"], r["symbol"], r["id"]) for r in rows)
        assert set(keys) == expected[kind] and max(keys.values()) == 1, f"every {kind} row exactly once"
    assert {r["exchange"] for r in trades} == {r["exchange"] for r in quotes} == {"BINANCE", "COINBASE", "KRAKEN"}
    assert all(r["instrument"] == _instrument(r["exchange"], r["symbol"]) for r in trades + quotes)
    want = Counter((e, _instrument(e, s)) for e, s, _ in expected["trades"])
    want_quotes = Counter((e, _instrument(e, s)) for e, s, _ in expected["quotes"])
    want_quotes[("KRAKEN", "BTC/USD")] = len(tickers)
    # Kraken's trades (BTC/USDT) and tickers (BTC/USD) are of different instruments: the join keeps neither.
    assert [(r["exchange"], r["instrument"], r["trades"], r["quotes"]) for r in compared] == [
        (e, i, want[(e, i)], want_quotes[(e, i)]) for e, i in sorted(want) if want_quotes[(e, i)]
    ]

    # Completeness per venue: `k2 quality` rows of each venue's symbols, every recorded trade, none missing.
    venue_symbols = (("BINANCE", {"BTCUSDT", "ETHUSDT"}), ("COINBASE", set(PRODUCTS)), ("KRAKEN", {"BTC/USDT"}))
    for exchange, symbols in venue_symbols:
        report = _csv(["quality", "--warehouse", str(warehouse), "--exchange", exchange.lower(), "-f", "csv"])
        assert {r["exchange"] for r in report} == {exchange} and {r["symbol"] for r in report} == symbols
        assert sum(int(r["trades"]) for r in report) == sum(1 for e, _, _ in expected["trades"] if e == exchange)
        assert sum(int(r["missing"]) for r in report) == 0
        assert sum(int(r["duplicates_dropped"]) for r in report) > 0  # the injected duplicates, seen per venue
