"""The dashboard in a real headless Chromium, against a service filled by the emulator through the
embedded pipeline in the same process (what `k2 run --serve` runs), with a withheld range and backfill
off so a gap stays OPEN.

Asserts what a person would see: candles drawn, the injected gap listed with its ids and status, the
pipeline's live counters, a working SQL console, and no JavaScript error (CSP violations included).
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
from k2.emulator.recording import BUNDLED_BINANCE_TRADES, read_recording
from k2.emulator.server import EmulatorThread, ReplayConfig
from k2.services.pipeline import EmbeddedPipeline
from k2.services.serve import ApiServer
from tests.conftest import eventually

pytestmark = pytest.mark.integration

WITHHOLD = ((5_001, 40),)


def expected_gaps() -> set[tuple[str, int, int]]:
    """(symbol, first id, last id) of each run of consecutive ids the withheld range removes."""
    recording = [json.loads(f.raw) for f in routable_frames(read_recording(BUNDLED_BINANCE_TRADES))]
    withheld: dict[str, list[int]] = {}
    for start, count in WITHHOLD:
        for d in recording[start - 1 : start - 1 + count]:
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
    config = ReplayConfig(recording=BUNDLED_BINANCE_TRADES, speed=None, faults=Faults(withhold=WITHHOLD))
    with EmulatorThread(config) as emu:
        settings = K2Settings(
            source=SourceSettings(exchange_info_cache=root / "xinfo.json", rest_url=emu.url.replace("ws", "http", 1)),
            lake=LakeSettings(warehouse=root / "warehouse", flush_rows=5_000, flush_seconds=0.2),
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
        page.wait_for_function("() => window.k2dash.gapsShown() > 0", timeout=60_000)
        page.wait_for_function("() => window.k2dash.loads >= 2", timeout=60_000)  # a live refresh went through

        assert page.locator("#chart canvas").count() > 0
        assert int(page.locator("#chart").get_attribute("data-points") or 0) > 5
        assert page.locator("#mode").inner_text() == "open (localhost)"
        assert page.locator("#last-price").inner_text() not in ("", "–")

        shown = page.locator("#gaps-table tbody tr[data-event]")
        rows = {
            (r.get_attribute("data-first-id"), r.get_attribute("data-last-id"), r.get_attribute("data-status"))
            for r in shown.all()
        }
        assert rows == {(str(first), str(last), "OPEN") for _, first, last in expected_gaps()}
        missing = page.locator("#quality-table tbody tr td.bad")
        assert missing.count() >= 1  # a symbol-day with ids missing is flagged

        assert "live counters" in page.locator("#feeds-source").inner_text()
        assert page.locator("#venues-table tbody tr").count() == 1
        assert page.locator("#trades-table tbody tr").count() == 25

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
