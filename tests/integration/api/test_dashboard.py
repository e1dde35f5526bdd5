"""The dashboard in a real headless Chromium, against a service filled by the emulator through the
embedded pipeline in the same process (what `k2 run --serve` runs): the whole recorded session (trades
and bookTicker quotes), with a withheld range and backfill off so a gap stays OPEN.

Asserts what a person would see: candles drawn, the best bid/ask and spread chart drawn, recent trades
with their prevailing quote, the injected gap listed with its ids and status, freshness per feed and
kind, the pipeline's live counters, a working SQL console, and no JavaScript error (CSP violations
included).
A screenshot is saved (the path is printed; ``K2_TEST_ARTIFACTS`` chooses the directory).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from k2.config import ApiSettings, K2Settings, LakeSettings, QualitySettings, SourceSettings
from k2.emulator.faults import Faults, routable_frames
from k2.emulator.recording import BUNDLED_BINANCE_SESSION, read_recording
from k2.emulator.server import EmulatorThread, ReplayConfig
from k2.services.pipeline import EmbeddedPipeline
from k2.services.serve import ApiServer
from tests.conftest import eventually

pytestmark = pytest.mark.integration

WITHHOLD = ((20_001, 100),)  # 100 frames: 10 BTCUSDT and 9 ETHUSDT trades among them, and quotes
# Paced: the 650 s session takes at least 13 s, so its quotes, timed by when K2 received them, span at
# least 13 one-second buckets (a lower bound the pacing guarantees, however slow the machine is).
SPEED = 50.0


def expected_gaps() -> set[tuple[str, int, int]]:
    """(symbol, first id, last id) of each run of consecutive trade ids the withheld range removes."""
    recording = list(routable_frames(read_recording(BUNDLED_BINANCE_SESSION)))
    withheld: dict[str, list[int]] = {}
    for start, count in WITHHOLD:
        for frame in recording[start - 1 : start - 1 + count]:
            if frame.stream is not None and frame.stream.endswith("@trade"):
                d = json.loads(frame.raw)
                withheld.setdefault(d["s"], []).append(d["t"])
    runs = set()
    for symbol, ids in withheld.items():
        ids.sort()
        first = prev = ids[0]
        for i in ids[1:]:
            if i != prev + 1:
                runs.add((symbol, first, prev))
                first = i
            prev = i
        runs.add((symbol, first, prev))
    return runs


class _Pipeline:
    """EmbeddedPipeline on its own event loop in a thread (as `k2 run` runs it, minus signals)."""

    def __init__(self, pipeline: EmbeddedPipeline) -> None:
        self.pipeline = pipeline
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self.error: BaseException | None = None

    def _main(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._started.set()
            await self.pipeline.run()

        try:
            asyncio.run(run())
        except BaseException as exc:
            self.error = exc
            self._started.set()

    def start(self) -> None:
        self._thread.start()
        assert self._started.wait(30)

    def stop(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.pipeline.stop)
        self._thread.join(60)
        assert self.error is None, self.error


@pytest.fixture(scope="module")
def emulated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The emulator's replay (with a withheld range) captured by the pipeline and served, in one process."""
    root = tmp_path_factory.mktemp("dashboard")
    config = ReplayConfig(recording=BUNDLED_BINANCE_SESSION, speed=SPEED, faults=Faults(withhold=WITHHOLD))
    with EmulatorThread(config) as emu:
        settings = K2Settings(
            source=SourceSettings(
                symbols=("BTCUSDT", "ETHUSDT"),
                kinds=("trades", "quotes"),
                exchange_info_cache=root / "xinfo.json",
                rest_url=emu.url.replace("ws", "http", 1),
            ),
            lake=LakeSettings(warehouse=root / "warehouse", flush_rows=20_000, flush_seconds=0.2),
            quality=QualitySettings(backfill=False, gap_grace_s=0.2),
            api=ApiSettings(port=0, auth="open"),
        )
        pipeline = _Pipeline(EmbeddedPipeline(settings, ws_base_url=emu.url, is_sample_data=True))
        pipeline.start()
        api = ApiServer(settings, process_metrics=True)
        url = api.start()
        try:
            want = expected_gaps()

            def gaps_committed() -> bool:
                assert emu.finished and pipeline.pipeline.stats.frames >= emu.frames_sent
                gaps = httpx.get(f"{url}/v1/gaps", timeout=30).json()["data"]
                return {(g["symbol"], g["first_id"], g["last_id"]) for g in gaps} == want

            eventually(gaps_committed, timeout=180, interval=0.5)
            yield url
        finally:
            api.stop()
            pipeline.stop()


def _artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("K2_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_dashboard_shows_chart_gap_feeds_and_sql_without_js_errors(emulated: str, browser: Any, tmp_path: Path) -> None:
    page = browser.new_page()
    page.set_viewport_size({"width": 1400, "height": 1500})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("requestfailed", lambda req: errors.append(f"requestfailed: {req.url}"))
    page.on("response", lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    try:
        page.goto(f"{emulated}/", wait_until="load")
        page.wait_for_function("() => window.k2dash && window.k2dash.chartPoints() > 0", timeout=60_000)
        page.wait_for_function("() => window.k2dash.spreadPoints() > 0", timeout=60_000)
        page.wait_for_function("() => window.k2dash.gapsShown() > 0", timeout=60_000)
        page.wait_for_function("() => window.k2dash.loads >= 2", timeout=60_000)  # a live refresh went through
        page.select_option("#interval", "1s")
        page.wait_for_function("() => window.k2dash.spreadPoints() >= 13", timeout=60_000)

        assert page.locator("#chart canvas").count() > 0
        assert int(page.locator("#chart").get_attribute("data-points") or 0) > 5
        assert page.locator("#mode").inner_text() == "open (localhost)"
        assert page.locator("#last-price").inner_text() not in ("", "–")

        # The best bid/ask and spread panel: a point per bucket, drawn, and the window's statistics.
        assert page.locator("#spread-chart canvas").count() > 0
        assert int(page.locator("#spread-chart").get_attribute("data-points") or 0) >= 13
        stats = page.locator("#spread-stats").inner_text()
        assert stats.startswith("best bid ") and " quotes · spread mean " in stats and "bps" in stats
        trades = page.locator("#trades-table tbody tr")
        assert trades.count() == 25
        bids = [c for c in page.locator("#trades-table tbody tr td:nth-child(5)").all_inner_texts() if c]
        asks = [c for c in page.locator("#trades-table tbody tr td:nth-child(6)").all_inner_texts() if c]
        assert len(bids) == len(asks) >= 20 and all(float(b) < float(a) for b, a in zip(bids, asks, strict=True))

        shown = page.locator("#gaps-table tbody tr[data-event]")
        rows = {
            (r.get_attribute("data-first-id"), r.get_attribute("data-last-id"), r.get_attribute("data-status"))
            for r in shown.all()
        }
        assert rows == {(str(first), str(last), "OPEN") for _, first, last in expected_gaps()}
        missing = page.locator("#quality-table tbody tr td.bad")
        assert missing.count() >= 1  # a symbol-day with ids missing is flagged

        assert "live counters" in page.locator("#feeds-source").inner_text()
        # The pipeline's own venue, with its live counters (rows of other venues are earlier in-process
        # tests' metrics: the Prometheus registry is one per process).
        venues = {r.locator("td").all_inner_texts()[0] for r in page.locator("#venues-table tbody tr").all()}
        assert "binance" in venues
        feeds = {tuple(r.locator("td").all_inner_texts()[:3]) for r in page.locator("#feeds-table tbody tr").all()}
        assert feeds == {("BINANCE", s, k) for s in ("BTCUSDT", "ETHUSDT") for k in ("trades", "quotes")}

        page.fill("#sql-input", "SELECT symbol, count(*) AS n FROM trades GROUP BY symbol ORDER BY symbol")
        page.click("#sql-form button")
        page.wait_for_function("() => document.querySelector('#sql-status').textContent.includes('rows')")
        assert page.locator("#sql-table tbody tr").count() == 2
        assert page.locator("#sql-table thead th").all_inner_texts() == ["symbol", "n"]
    finally:
        shot = _artifacts(tmp_path) / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"dashboard screenshot: {shot}")
        page.close()
    assert errors == []
