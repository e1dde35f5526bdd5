"""A live `k2 serve` for the API tests: real uvicorn on a free port over a filled real warehouse.

The tables hold the bundled real session recording: its 34,419 Binance trades and 131,932 quotes
(bookTicker), each table in two commits; the quality-event table holds gap events describing ranges
of the trades (events are K2's own records, not market data).
Services built with other settings (rate limits, timeouts, open mode) start their own server on the
same warehouse (read-only for every test here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest

from k2.api.keys import KeyStore, Scope
from k2.config import ApiSettings, K2Settings, LakeSettings, SourceSettings
from k2.emulator.recording import BUNDLED_BINANCE_SESSION, read_recording
from k2.feed.stamp import parse_canonical
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.quality.records import QualityEventRow, events_batch
from k2.schema.kinds import RecordKind
from k2.schema.quality_event import EventKind, EventStatus
from k2.services.serve import ApiServer
from k2.sources.base import RawFrame

SPLIT = 20_000
QUOTE_SPLIT = 70_000
US = 1_000_000


@dataclass(frozen=True)
class Lake:
    settings: K2Settings
    trades: pa.Table  # what the tables hold, in recording order
    quotes: pa.Table


@dataclass(frozen=True)
class Keys:
    admin: str
    read: str
    sql: str


@dataclass(frozen=True)
class LiveApi:
    url: str
    keys: Keys
    settings: K2Settings

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)


def _gap(
    symbol: str, first: int, last: int, status: EventStatus, trade_us: int, after_s: int, event: str, detail: str = ""
) -> QualityEventRow:
    recovered = last - first + 1 if status is EventStatus.RESOLVED else 0
    return QualityEventRow(
        event, "BINANCE", symbol, "trade", EventKind.GAP, first, last, last - first + 1, trade_us, trade_us + US,
        status, trade_us + (1 + after_s) * US, recovered, detail,
    )  # fmt: skip


def gap_events(trades: pa.Table) -> list[QualityEventRow]:
    """A resolved and an unrecoverable BTCUSDT gap, an open ETHUSDT gap, placed at real trade ids/times."""
    rows = trades.select(["symbol", "source_sequence", "timestamp"]).to_pylist()
    btc = [r for r in rows if r["symbol"] == "BTCUSDT"]
    eth = [r for r in rows if r["symbol"] == "ETHUSDT"]

    def at(r: dict[str, Any]) -> int:
        return int(r["timestamp"].timestamp() * US)

    b1, b2, e1 = btc[100], btc[5_000], eth[200]
    s1, s2, s3 = b1["source_sequence"], b2["source_sequence"], e1["source_sequence"]
    return [
        _gap("BTCUSDT", s1, s1 + 9, EventStatus.OPEN, at(b1), 0, "gap-btc-1"),
        _gap("BTCUSDT", s1, s1 + 9, EventStatus.RESOLVED, at(b1), 2, "gap-btc-1"),
        _gap("BTCUSDT", s2, s2 + 2, EventStatus.OPEN, at(b2), 0, "gap-btc-2"),
        _gap("BTCUSDT", s2, s2 + 2, EventStatus.UNRECOVERABLE, at(b2), 1, "gap-btc-2", "REST kept failing"),
        _gap("ETHUSDT", s3, s3 + 4, EventStatus.OPEN, at(e1), 0, "gap-eth-1"),
    ]


@pytest.fixture(scope="session")
def session_frames() -> list[RawFrame]:
    """The bundled real session recording (trades, bookTicker, depth) as raw frames."""
    return [RawFrame(f.frame.encode(), f.recv_us) for f in read_recording(BUNDLED_BINANCE_SESSION)]


@pytest.fixture(scope="session")
def api_lake(tmp_path_factory: pytest.TempPathFactory, session_frames: list[RawFrame]) -> Lake:
    root = tmp_path_factory.mktemp("api")
    settings = K2Settings(
        source=SourceSettings(exchange_info_cache=root / "xinfo.json"),
        lake=LakeSettings(warehouse=root / "warehouse"),
        api=ApiSettings(port=0, keys_file=root / "keys" / "api-keys.json"),
    )
    parsed = parse_canonical(
        "binance", session_frames, symbols=("BTCUSDT", "ETHUSDT"), kinds=(RecordKind.TRADES, RecordKind.QUOTES),
        first_sequence=1, is_sample_data=True,
    )  # fmt: skip
    trades = pa.Table.from_batches([parsed.records[RecordKind.TRADES]])
    quotes = pa.Table.from_batches([parsed.records[RecordKind.QUOTES]])
    catalog = open_catalog(settings.lake)
    for kind, rows, split in ((RecordKind.TRADES, trades, SPLIT), (RecordKind.QUOTES, quotes, QUOTE_SPLIT)):
        table = load_or_create_table(catalog, settings.lake, kind)
        table.append(rows.slice(0, split))
        table.append(rows.slice(split))
    load_or_create_table(catalog, settings.lake, RecordKind.QUALITY_EVENTS).append(
        pa.Table.from_batches([events_batch(gap_events(trades))])
    )
    return Lake(settings, trades, quotes)


@pytest.fixture(scope="session")
def api_keys(api_lake: Lake) -> Keys:
    store = KeyStore(api_lake.settings.api.keys_file or Path())
    admin, _ = store.create("tests-admin", (Scope.ADMIN,))
    read, _ = store.create("tests-read", (Scope.READ,))
    sql, _ = store.create("tests-sql", (Scope.SQL,))
    return Keys(admin, read, sql)


def api_settings(lake: Lake, **api: Any) -> K2Settings:
    """The lake's settings with API settings replaced (port 0 unless given)."""
    merged = {**lake.settings.api.model_dump(), "port": 0, "rate_limit": "100000/second", **api}
    return lake.settings.model_copy(update={"api": ApiSettings(**merged)})


@pytest.fixture(scope="session")
def start_api() -> Iterator[Callable[[K2Settings], str]]:
    """Start an ApiServer with the given settings; every one is stopped at the end of the session."""
    servers: list[ApiServer] = []

    def start(settings: K2Settings) -> str:
        server = ApiServer(settings)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def live_api(api_lake: Lake, api_keys: Keys, start_api: Callable[[K2Settings], str]) -> LiveApi:
    """The service in keyed mode (keys required), high rate limit, default timeout and row cap."""
    settings = api_settings(api_lake, auth="keys", query_timeout_s=30.0)
    return LiveApi(start_api(settings), api_keys, settings)


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's Chromium, headless, one process for the session (a fresh profile directory), installed by
    deploy/scripts/ensure-chromium.sh when missing; yields its DevTools WebSocket URL."""
    import subprocess
    import time

    script = Path(__file__).parents[3] / "deploy" / "scripts" / "ensure-chromium.sh"
    found = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    assert found.returncode == 0, f"no Chromium: {found.stderr[-500:]}"
    profile = tmp_path_factory.mktemp("chromium-profile")
    command = [found.stdout.strip(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0"]
    proc = subprocess.Popen([*command, "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    active = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not (active.exists() and len(active.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "Chromium did not open its DevTools port"
        time.sleep(0.05)
    port, path = active.read_text().splitlines()[:2]
    try:
        yield f"ws://127.0.0.1:{port}{path}"
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture
def browser(chromium: str) -> Iterator[Any]:
    """The session's Chromium, driven by Playwright over CDP for one test. Playwright's sync API runs an
    event loop in this thread while it is open, so it is opened per test, never for the whole session
    (``asyncio.run`` in later tests would fail)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        connected = playwright.chromium.connect_over_cdp(chromium)
        context = connected.new_context()
        try:
            yield context
        finally:
            context.close()
            connected.close()
