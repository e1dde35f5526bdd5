"""WebSocketSession's transport edges against real loopback servers: batches, fragmented messages,
the message size limit, client pings, backpressure. Frames are the bundled real ones (an oversized
one is a real frame padded with JSON whitespace)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server
from websockets.asyncio.server import ServerConnection, serve

from k2.config import SourceSettings
from k2.emulator.server import BinanceEmulator
from k2.sources import RawFrame
from k2.sources import session as session_module
from k2.sources.session import WebSocketSession
from tests.conftest import binance_parser, eventually_async

pytestmark = pytest.mark.integration

FAST = SourceSettings(reconnect_initial_s=0.01, reconnect_max_s=0.05, max_connect_attempts=20)
TOTAL = 34_419

Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def _server(handler: Handler) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=2**24) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"


async def _run_until(session: WebSocketSession, got: list[RawFrame], n: int, batches: list[int] | None = None) -> None:
    async def sink(frames: list[RawFrame]) -> None:
        assert frames, "a sink is never handed an empty batch"
        got.extend(frames)
        if batches is not None:
            batches.append(len(frames))
        if len(got) >= n:
            session.stop()

    await asyncio.wait_for(session.run(sink), 30)


def test_frames_come_in_batches_in_wire_order_with_increasing_receive_times(bundled_frames: list[RawFrame]) -> None:
    async def main() -> tuple[list[RawFrame], list[int]]:
        async with BinanceEmulator() as emu:
            url = binance_parser(["BTCUSDT", "ETHUSDT"]).stream_urls(emu.url)[0]
            session = WebSocketSession(url, venue="binance", settings=FAST)
            got: list[RawFrame] = []
            batches: list[int] = []
            await _run_until(session, got, TOTAL, batches)
            return got, batches

    got, batches = asyncio.run(main())
    assert [f.payload for f in got] == [f.payload for f in bundled_frames]
    times = [f.received_at_us for f in got]
    assert all(b > a for a, b in itertools.pairwise(times))  # strictly increasing
    assert sum(batches) == TOTAL
    assert len(batches) < TOTAL  # many frames per hand-off (as many as one socket read held)


def test_fragmented_messages_are_assembled(bundled_frames: list[RawFrame]) -> None:
    first, second, third = (f.payload.decode() for f in bundled_frames[:3])

    async def handler(ws: ServerConnection) -> None:
        await ws.send(first)
        await ws.send([first[:10], first[10:100], first[100:]])  # one message in three frames
        await ws.send([second.encode()[:7], second.encode()[7:]])  # binary, in two
        await ws.send(third)
        await ws.wait_closed()

    async def main() -> list[bytes]:
        async with _server(handler) as url:
            session = WebSocketSession(url, venue="binance", settings=FAST)
            got: list[RawFrame] = []
            await _run_until(session, got, 4)
            return [f.payload for f in got]

    assert asyncio.run(main()) == [first.encode(), first.encode(), second.encode(), third.encode()]


@pytest.mark.parametrize("fragmented", [False, True])
def test_a_message_over_the_limit_closes_with_1009_and_the_session_reconnects(
    monkeypatch: pytest.MonkeyPatch, bundled_frames: list[RawFrame], fragmented: bool
) -> None:
    monkeypatch.setattr(session_module, "MAX_MESSAGE_BYTES", 1_000)
    real = bundled_frames[0].payload.decode()
    padded = real[:-1] + " " * 1_200 + "}"  # the same JSON, 1,400 bytes: over the limit
    connections = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            await ws.send([padded[:600], padded[600:]] if fragmented else padded)
        await ws.send(real)
        await ws.wait_closed()

    async def main() -> tuple[list[bytes], dict[str, object]]:
        async with _server(handler) as url:
            session = WebSocketSession(url, venue="binance", settings=FAST)
            got: list[RawFrame] = []
            await _run_until(session, got, 1)
            return [f.payload for f in got], session.get_stats()

    got, stats = asyncio.run(main())
    assert got == [real.encode()]  # the oversized message was never delivered; the next connection's was
    assert stats["reconnects_by_reason"] == {"dropped": 0, "error": 1, "max_age": 0}
    assert stats["connections"] == 2
    assert "1000" in str(stats["last_error"]) or "exceed" in str(stats["last_error"])


def test_a_peer_that_stops_answering_pings_is_dropped_and_replaced(
    monkeypatch: pytest.MonkeyPatch, bundled_frames: list[RawFrame]
) -> None:
    monkeypatch.setattr(session_module, "PING_INTERVAL_S", 0.1)
    monkeypatch.setattr(session_module, "PING_TIMEOUT_S", 0.1)  # picows: at most the interval
    payload = bundled_frames[0].payload
    pings = 0

    class Silent(WSListener):  # type: ignore[misc]
        """Sends one real frame, then never answers a ping (a half-dead link)."""

        def on_ws_connected(self, transport: WSTransport) -> None:
            transport.send(WSMsgType.TEXT, payload)

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            nonlocal pings
            pings += frame.msg_type == WSMsgType.PING

    async def main() -> dict[str, object]:
        server = await ws_create_server(lambda _: Silent(), "127.0.0.1", 0, enable_auto_pong=False)
        port = server.sockets[0].getsockname()[1]
        session = WebSocketSession(f"ws://127.0.0.1:{port}/ws", venue="binance", settings=FAST)
        got: list[RawFrame] = []

        async def sink(frames: list[RawFrame]) -> None:
            got.extend(frames)

        run = asyncio.create_task(session.run(sink))

        async def dropped() -> bool:
            return session.reconnects["dropped"] >= 1 and session.connected

        await eventually_async(dropped)
        session.stop()
        await asyncio.wait_for(run, 10)
        server.close()
        assert [f.payload for f in got[:2]] == [payload, payload]  # the first connection's, then the next one's
        return session.get_stats()

    stats = asyncio.run(main())
    assert pings >= 1
    assert stats["connections"] >= 2
    assert "ping" in str(stats["last_error"])


def test_a_sink_that_does_not_keep_up_stops_the_socket_being_read_and_loses_nothing(
    monkeypatch: pytest.MonkeyPatch, bundled_frames: list[RawFrame]
) -> None:
    monkeypatch.setattr(session_module, "MAX_BUFFERED_FRAMES", 100)

    async def main() -> tuple[list[RawFrame], bool]:
        async with BinanceEmulator() as emu:
            url = binance_parser(["BTCUSDT", "ETHUSDT"]).stream_urls(emu.url)[0]
            session = WebSocketSession(url, venue="binance", settings=FAST)
            got: list[RawFrame] = []
            release = asyncio.Event()

            async def sink(frames: list[RawFrame]) -> None:
                got.extend(frames)
                await release.wait()  # the first batch holds the session up until released
                if len(got) >= TOTAL:
                    session.stop()

            run = asyncio.create_task(session.run(sink))

            async def paused() -> bool:
                conn = session._conn
                return (
                    conn is not None
                    and conn.transport is not None
                    and not conn.transport.underlying_transport.is_reading()
                )

            was_paused = await eventually_async(paused)
            release.set()
            await asyncio.wait_for(run, 30)
            return got, was_paused

    got, was_paused = asyncio.run(main())
    assert was_paused
    assert [f.payload for f in got] == [f.payload for f in bundled_frames]


def _server_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked, final server frame (RFC 6455 5.2), for payloads under 64 KiB."""
    n = len(payload)
    length = bytes([n]) if n < 126 else bytes([126]) + n.to_bytes(2, "big")
    return bytes([0x80 | opcode]) + length + payload


def test_a_frame_followed_by_a_ping_in_the_same_read_is_handed_over_without_waiting_for_more(
    bundled_frames: list[RawFrame],
) -> None:
    """picows answers the ping itself and never shows it to the session: the frame before it must
    still reach the sink at once, though nothing else arrives after it."""
    payload = bundled_frames[0].payload

    class FrameThenPing(WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.TEXT:  # the subscription: the handshake is long done
                # Both frames in one socket write, so that the client reads them together.
                transport.underlying_transport.write(_server_frame(0x1, payload) + _server_frame(0x9, b"k2"))

    async def main() -> list[bytes]:
        server = await ws_create_server(lambda _: FrameThenPing(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        subscribe = ['{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}']
        session = WebSocketSession(
            f"ws://127.0.0.1:{port}/ws", venue="binance", settings=FAST, subscribe_messages=subscribe
        )
        got: list[RawFrame] = []
        await _run_until(session, got, 1)  # times out (30 s) if the frame waited for more data
        server.close()
        return [f.payload for f in got]

    assert asyncio.run(main()) == [payload]
