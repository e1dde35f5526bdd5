"""Capture -> replay: a capture taken from the emulator replays identically."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from k2.config import K2Settings, SourceSettings
from k2.emulator.recording import read_recording
from k2.emulator.server import BinanceEmulator, ReplayConfig
from k2.errors import ConfigError, ExchangeUnreachable
from k2.services.capture import capture
from k2.sources import RawFrame

TOTAL = 34_419


def test_capture_then_replay_round_trip(tmp_path: Path, settings: K2Settings, bundled_frames: list[RawFrame]) -> None:
    out = tmp_path / "captured.jsonl.gz"
    expected = [f.payload for f in bundled_frames]

    async def record() -> int:
        async with BinanceEmulator() as emu:
            return await capture(settings, out, url=emu.url, max_frames=TOTAL)

    started_us = time.time_ns() // 1000
    written = asyncio.run(record())
    ended_us = time.time_ns() // 1000
    captured = list(read_recording(out))
    assert written == TOTAL
    assert [c.frame.encode() for c in captured] == expected
    receive_times = [c.recv_us for c in captured]
    assert receive_times == sorted(receive_times)
    assert started_us <= receive_times[0] <= receive_times[-1] <= ended_us

    async def replay() -> list[bytes]:
        async with (
            BinanceEmulator(ReplayConfig(recording=out)) as emu,
            connect(emu.url + "/stream?streams=btcusdt@trade/ethusdt@trade", compression=None) as ws,
        ):
            return [await asyncio.wait_for(ws.recv(decode=False), 10) for _ in range(TOTAL)]

    assert asyncio.run(replay()) == expected


def test_capture_stops_after_duration(tmp_path: Path, settings: K2Settings, bundled_frames: list[RawFrame]) -> None:
    out = tmp_path / "short.jsonl.gz"

    async def record() -> int:
        async with BinanceEmulator(ReplayConfig(speed=1.0)) as emu:  # the recorded pace: ~50 trades/s
            return await capture(settings, out, url=emu.url, duration_s=0.5)

    written = asyncio.run(record())
    captured = [c.frame.encode() for c in read_recording(out)]
    assert 0 < written < TOTAL
    assert captured == [f.payload for f in bundled_frames[:written]]


def test_capture_gives_up_on_an_unreachable_venue(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    settings = K2Settings(
        source=SourceSettings(max_connect_attempts=2, reconnect_initial_s=0.01, exchange_info_cache=tmp_path / "x")
    )
    with pytest.raises(ExchangeUnreachable, match="after 2 attempt"):
        asyncio.run(capture(settings, tmp_path / "none.jsonl.gz", url=f"ws://127.0.0.1:{port}", max_frames=10))
    assert list(read_recording(tmp_path / "none.jsonl.gz")) == []


def test_capture_rejects_nonsense_limits(tmp_path: Path, settings: K2Settings) -> None:
    with pytest.raises(ConfigError):
        asyncio.run(capture(settings, tmp_path / "x.jsonl.gz", max_frames=0))
