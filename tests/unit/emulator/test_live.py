"""Live mode: the feed keeps moving while no client is connected, as on a real venue (real sockets)."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from k2.cli import app
from k2.emulator.faults import Faults
from k2.emulator.server import BinanceEmulator, ReplayConfig
from k2.errors import ConfigError
from k2.sources import RawFrame
from tests.conftest import eventually_async
from tests.unit.emulator.test_server import BOTH, _connect, _recv, _until_closed


def test_live_mode_moves_on_while_the_client_is_away_and_rest_still_serves_what_it_missed(
    bundled_frames: list[RawFrame],
) -> None:
    async def main() -> tuple[list[bytes], list[bytes], int, dict[str, object], int]:
        config = ReplayConfig(speed=50.0, live=True, faults=Faults(disconnect_after=(100,)))
        async with BinanceEmulator(config) as emu:
            async with _connect(emu.url + BOTH) as ws:
                first = await _until_closed(ws)

            async def moved_on() -> bool:
                return emu.missed >= 300

            await eventually_async(moved_on, timeout=30)  # nobody connected, the cursor moves on
            missed_before = emu.missed
            async with _connect(emu.url + BOTH) as ws:
                second = await _recv(ws, 20)
            return first, second, missed_before, emu.stats(), emu.replayed

    first, second, missed_before, stats, replayed = asyncio.run(main())
    expected = [f.payload for f in bundled_frames]
    assert first == expected[:100]
    resumed = expected.index(second[0])
    assert resumed >= 100 + missed_before  # the frames due while away were never sent
    assert second == expected[resumed : resumed + 20]  # then the stream goes on in order
    assert stats["missed"] >= resumed - 100 and replayed >= 120

    # What the client missed is still served over REST (backfill can close the gap).
    lost = json.loads(expected[100])["data"]
    rest = BinanceEmulator(ReplayConfig()).rest
    answer = rest.handle(f"/api/v3/historicalTrades?symbol={lost['s']}&fromId={lost['t']}&limit=1")
    assert answer is not None and answer.status == 200 and json.loads(answer.body)[0]["id"] == lost["t"]


def test_live_disconnects_come_at_the_same_moment_of_the_feed_however_much_was_missed(
    bundled_frames: list[RawFrame],
) -> None:
    """``disconnect_after`` counts the feed's frames, sent or missed: the second drop is right after the
    400th recorded frame, not after the 400th frame this client happened to receive."""

    async def main() -> tuple[list[bytes], int]:
        config = ReplayConfig(speed=50.0, live=True, faults=Faults(disconnect_after=(100, 400)))
        async with BinanceEmulator(config) as emu:
            async with _connect(emu.url + BOTH) as ws:
                await _until_closed(ws)

            async def moved_on() -> bool:
                return emu.missed >= 150

            await eventually_async(moved_on, timeout=30)
            async with _connect(emu.url + BOTH) as ws:
                second = await _until_closed(ws)
            return second, emu.missed

    second, missed = asyncio.run(main())
    expected = [f.payload for f in bundled_frames]
    assert missed >= 150 and second
    assert second[-1] == expected[399]  # dropped right after the feed's 400th frame
    assert second == expected[400 - len(second) : 400]


def test_without_live_mode_the_feed_waits_for_the_client(bundled_frames: list[RawFrame]) -> None:
    async def main() -> tuple[list[bytes], int]:
        config = ReplayConfig(speed=50.0, faults=Faults(disconnect_after=(100,)))
        async with BinanceEmulator(config) as emu:
            async with _connect(emu.url + BOTH) as ws:
                await _until_closed(ws)
            async with _connect(emu.url + BOTH) as ws:
                return await _recv(ws, 20), emu.missed

    second, missed = asyncio.run(main())
    assert second == [f.payload for f in bundled_frames[100:120]] and missed == 0


def test_live_mode_needs_a_pace() -> None:
    with pytest.raises(ConfigError, match="live mode needs a pace"):
        ReplayConfig(live=True)
    result = CliRunner().invoke(app, ["emulator", "--live", "--speed", "max"])
    assert result.exit_code == 1 and "live mode needs a pace" in result.output


def test_hold_at_stops_the_cursor_until_release(bundled_frames: list[RawFrame]) -> None:
    async def main() -> tuple[list[bytes], int, list[bytes]]:
        config = ReplayConfig(speed=50.0, live=True, hold_at=150)
        async with BinanceEmulator(config) as emu, _connect(emu.url + BOTH) as ws:
            before = await _recv(ws, 149)
            with pytest.raises(TimeoutError):  # frame 150 waits (a broken hold would only pass this)
                async with asyncio.timeout(0.3):
                    await ws.recv()
            held = emu.replayed + emu.missed
            emu.release()
            return before, held, await _recv(ws, 10)

    before, held, after = asyncio.run(main())
    expected = [f.payload for f in bundled_frames]
    assert before == expected[:149] and held == 149 and after == expected[149:159]
