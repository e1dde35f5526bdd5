"""WebSocketSession against the emulator over loopback: reconnects lose nothing, limits, TLS, pings."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from k2.config import SourceSettings
from k2.emulator.faults import Faults
from k2.emulator.recording import BUNDLED_BINANCE_TRADES, RecordingWriter, read_recording
from k2.emulator.server import BinanceEmulator, ReplayConfig
from k2.errors import ExchangeUnreachable
from k2.metrics import REGISTRY
from k2.sources import RawFrame
from k2.sources.session import CONTROL_MESSAGE_INTERVAL_S, WebSocketSession
from tests.conftest import binance_parser, eventually_async

pytestmark = pytest.mark.integration

TOTAL = 34_419
FAST = SourceSettings(reconnect_initial_s=0.02, reconnect_max_s=0.1, max_connect_attempts=20)


def _url(base: str) -> str:
    return binance_parser(["BTCUSDT", "ETHUSDT"]).stream_urls(base)[0]


def _reconnects(reason: str) -> float:
    return REGISTRY.get_sample_value("k2_ws_reconnects_total", {"venue": "binance", "reason": reason}) or 0.0


def _connected() -> float | None:
    return REGISTRY.get_sample_value("k2_ws_connected", {"venue": "binance"})


def _messages() -> float:
    return REGISTRY.get_sample_value("k2_ws_messages_received_total", {"venue": "binance"}) or 0.0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _collect(session: WebSocketSession, until: int) -> list[RawFrame]:
    got: list[RawFrame] = []

    async def sink(frames: list[RawFrame]) -> None:
        got.extend(frames)
        if len(got) >= until:
            session.stop()

    await asyncio.wait_for(session.run(sink), 60)
    return got


def test_session_reconnects_after_injected_drops_and_loses_or_repeats_nothing(
    bundled_frames: list[RawFrame],
) -> None:
    dropped_before, messages_before = _reconnects("dropped"), _messages()
    seen_connected: list[float | None] = []

    async def main() -> tuple[list[RawFrame], dict[str, object], dict[str, object]]:
        faults = Faults(disconnect_after=(5_000, 5_001, 20_000))
        async with BinanceEmulator(ReplayConfig(faults=faults)) as emu:
            session = WebSocketSession(_url(emu.url), venue="binance", settings=FAST)
            got: list[RawFrame] = []

            async def sink(frames: list[RawFrame]) -> None:
                if not got:
                    seen_connected.append(_connected())
                got.extend(frames)
                if len(got) >= TOTAL:
                    session.stop()

            await asyncio.wait_for(session.run(sink), 60)
            return got, session.get_stats(), emu.stats()

    started_us = time.time_ns() // 1000
    got, stats, emu = asyncio.run(main())
    assert [f.payload for f in got] == [f.payload for f in bundled_frames]
    receive_times = [f.received_at_us for f in got]
    assert receive_times == sorted(receive_times)
    assert started_us <= receive_times[0] <= receive_times[-1] <= time.time_ns() // 1000
    assert stats["reconnects_by_reason"] == {"dropped": 3, "error": 0, "max_age": 0}
    assert stats["connections"] == 4
    assert stats["frames"] == TOTAL
    assert stats["connected"] is False
    assert stats["last_error"] == "closed without a close frame (1006)"
    assert emu["connections"] == 4
    assert emu["disconnects_injected"] == 3
    assert _reconnects("dropped") - dropped_before == 3
    assert _messages() - messages_before == TOTAL
    assert seen_connected == [1.0]
    assert _connected() == 0.0


def test_unreachable_exchange_raises_after_max_connect_attempts() -> None:
    errors_before = _reconnects("error")
    settings = SourceSettings(reconnect_initial_s=0.01, reconnect_max_s=0.02, max_connect_attempts=3)
    session = WebSocketSession(f"ws://127.0.0.1:{_closed_port()}/ws/btcusdt@trade", venue="binance", settings=settings)
    with pytest.raises(ExchangeUnreachable) as info:
        asyncio.run(_collect(session, 1))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot connect to {session.url} after 3 attempt(s): ")
    assert "refused" in message.lower()
    assert _reconnects("error") - errors_before == 2  # two retries before giving up
    assert session.failed_attempts == 3
    assert session.connections == 0


def test_http_error_at_handshake_is_a_failed_attempt() -> None:
    async def main() -> None:
        async with BinanceEmulator() as emu:
            settings = SourceSettings(reconnect_initial_s=0.01, max_connect_attempts=2)
            session = WebSocketSession(emu.url + "/api/v3/trades", venue="binance", settings=settings)
            await _collect(session, 1)

    with pytest.raises(ExchangeUnreachable, match=r"after 2 attempt\(s\): HTTP 404 at handshake"):
        asyncio.run(main())


def _paced(path: Path, n: int, step_us: int) -> list[bytes]:
    frames = []
    with RecordingWriter(path) as writer:
        for i, frame in enumerate(read_recording(BUNDLED_BINANCE_TRADES)):
            if i == n:
                break
            writer.write(frame.frame, 1_723_161_255_000_000 + i * step_us)
            frames.append(frame.frame.encode())
    return frames


def test_connection_is_replaced_when_it_reaches_max_age(tmp_path: Path) -> None:
    expected = _paced(tmp_path / "paced.jsonl.gz", 60, 25_000)  # 1.5 s at the recorded pace
    max_age_before = _reconnects("max_age")

    async def main() -> tuple[list[RawFrame], dict[str, object]]:
        config = ReplayConfig(recording=tmp_path / "paced.jsonl.gz", speed=1.0)
        async with BinanceEmulator(config) as emu:
            settings = SourceSettings(max_connection_age_s=0.4, max_connect_attempts=3)
            session = WebSocketSession(_url(emu.url), venue="binance", settings=settings)
            got = await _collect(session, len(expected))
            return got, session.get_stats()

    got, stats = asyncio.run(main())
    reasons = stats["reconnects_by_reason"]
    assert isinstance(reasons, dict)
    # The replay cannot deliver its 60 frames in less than 1.5 s, and the first connection's 0.4 s
    # expiry is due long before the last frame: at least one replacement on any machine (a busy one
    # may delay reconnections and so see fewer than the ~3 of a quiet one).
    assert reasons["max_age"] >= 1
    assert reasons["dropped"] == reasons["error"] == 0
    assert stats["connections"] == reasons["max_age"] + 1
    assert _reconnects("max_age") - max_age_before == reasons["max_age"]
    # Closing is a handshake: frames already in flight are still read, and the shared cursor
    # sends the rest to the next connection.
    assert [f.payload for f in got] == expected


def test_server_pings_are_answered_while_the_session_runs() -> None:
    async def main() -> tuple[float, dict[str, object]]:
        config = ReplayConfig(speed=1.0, ping_interval_s=0.05, ping_timeout_s=1.0)
        async with BinanceEmulator(config) as emu:
            session = WebSocketSession(_url(emu.url), venue="binance", settings=FAST)
            frames: list[RawFrame] = []

            async def sink(batch: list[RawFrame]) -> None:
                frames.extend(batch)

            run = asyncio.create_task(session.run(sink))

            async def pongs() -> float:
                assert emu.server is not None
                return max((c.latency for c in emu.server.connections), default=0.0)

            latency = await eventually_async(pongs)
            session.stop()
            await asyncio.wait_for(run, 10)
            return latency, session.get_stats()

    latency, stats = asyncio.run(main())
    assert latency > 0
    assert stats["connections"] == 1
    assert stats["reconnects"] == 0


def test_subscribe_messages_are_paced_under_the_incoming_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The session spaces its control messages CONTROL_MESSAGE_INTERVAL_S apart (4/s, under Binance's 5/s),
    measured where they leave the client: a busy machine only widens the gaps there, whereas arrival
    times at the server can bunch up (that limit itself is enforced by the emulator, see
    tests/unit/emulator/test_server.py)."""
    streams = ["btcusdt@trade", "ethusdt@trade", *(f"x{i}usdt@trade" for i in range(6))]
    messages = [f'{{"method":"SUBSCRIBE","params":["{s}"],"id":{i}}}' for i, s in enumerate(streams, 1)]
    sent: list[float] = []
    send = WebSocketSession._send

    def timed_send(self: WebSocketSession, conn: Any, message: str) -> bool:
        if message in messages:
            sent.append(time.monotonic())
        return send(self, conn, message)

    monkeypatch.setattr(WebSocketSession, "_send", timed_send)

    async def main() -> list[bytes]:
        async with BinanceEmulator(ReplayConfig(max_client_messages_per_s=1_000, speed=1.0)) as emu:
            session = WebSocketSession(emu.url + "/ws", venue="binance", settings=FAST, subscribe_messages=messages)
            acks: list[bytes] = []

            async def sink(frames: list[RawFrame]) -> None:
                acks.extend(f.payload for f in frames if f.payload.startswith(b'{"result"'))
                if len(acks) >= len(messages):
                    session.stop()

            await asyncio.wait_for(session.run(sink), 20)
            return acks

    acks = asyncio.run(main())
    assert acks == [f'{{"result":null,"id":{i}}}'.encode() for i in range(1, 9)]
    assert len(sent) == len(messages)
    assert all(b - a >= CONTROL_MESSAGE_INTERVAL_S - 1e-3 for a, b in itertools.pairwise(sent))


def test_stop_from_another_thread(bundled_frames: list[RawFrame]) -> None:
    async def main() -> list[RawFrame]:
        async with BinanceEmulator(ReplayConfig(speed=1.0)) as emu:
            session = WebSocketSession(_url(emu.url), venue="binance", settings=FAST)
            got: list[RawFrame] = []

            async def sink(frames: list[RawFrame]) -> None:
                before = len(got)
                got.extend(frames)
                if before < 3 <= len(got):
                    threading.Thread(target=session.stop).start()

            await asyncio.wait_for(session.run(sink), 20)
            assert not session.connected
            return got

    got = asyncio.run(main())
    assert len(got) >= 3
    assert [f.payload for f in got] == [f.payload for f in bundled_frames[: len(got)]]


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_handshake_with_an_untrusted_certificate_fails_verification(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)

    async def handler(ws: ServerConnection) -> None:
        await ws.send('{"result":null,"id":1}')
        await ws.wait_closed()

    async def main() -> tuple[str, bytes]:
        async with serve(handler, "127.0.0.1", 0, ssl=server_ctx) as server:
            port = server.sockets[0].getsockname()[1]
            url = f"wss://localhost:{port}/ws"
            strict = WebSocketSession(
                url, venue="binance", settings=SourceSettings(max_connect_attempts=1, open_timeout_s=5)
            )
            with pytest.raises(ExchangeUnreachable) as info:
                await _collect(strict, 1)
            # Control: the same server is fine for a client that trusts this certificate.
            trusting = WebSocketSession(url, venue="binance", settings=SourceSettings(max_connect_attempts=1))
            trusting._ssl = ssl.create_default_context(cafile=str(cert))
            got = await _collect(trusting, 1)
            return str(info.value), got[0].payload

    message, payload = asyncio.run(main())
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert payload == b'{"result":null,"id":1}'
