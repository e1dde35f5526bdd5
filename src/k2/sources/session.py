"""The shared WebSocket session: connect, receive, time-stamp, reconnect. I/O lives here, at the edge.

A :class:`WebSocketSession` owns one URL. Frames are read by picows (a WebSocket protocol compiled
with Cython: the frame parsing and the read loop run in C), collected in the transport's read
callback, and handed to an async sink **in batches**: every frame that arrived since the sink last
returned, as :class:`~k2.sources.base.RawFrame` (bytes and the UTC receive time in microseconds).
There is no task switch or future per frame, only one hand-off per batch. The session awaits the
sink: a sink that suspends applies backpressure (past ``MAX_BUFFERED_FRAMES`` waiting, the socket
is no longer read until the sink takes them).

Receive time: the wall clock as picows hands the frame over, inside the read that brought it.
Receive times of one session strictly increase (a frame read in the same microsecond as
the one before is stamped one microsecond later), so ordering rows by receive time gives the wire
order exactly: the trade-quote as-of join relies on it (docs/query.md).

Reconnect policy: exponential backoff with full jitter between ``reconnect_initial_s`` and
``reconnect_max_s``, reset after a connection that delivered frames; a connection that reaches
``max_connection_age_s`` is replaced at once (Binance closes them after 24 h). A drop is logged once
and counted in ``k2_ws_reconnects_total{reason}`` with reason ``dropped`` (the peer or network closed
it, or it stopped answering pings), ``max_age`` or ``error`` (a failed connection attempt, or a
protocol violation such as a message over ``MAX_MESSAGE_BYTES``). Only ``max_connect_attempts``
consecutive failed attempts are fatal (:class:`~k2.errors.ExchangeUnreachable`).

Limits: a message (one frame, or the fragments of one) over ``MAX_MESSAGE_BYTES`` closes the
connection with 1009; the client pings after ``PING_INTERVAL_S`` without incoming data and drops the
connection when no pong comes within ``PING_TIMEOUT_S``; server pings are answered.

TLS: ``wss://`` URLs are verified against certifi's CA bundle (hostname and chain); there is no way
to turn verification off. ``ws://`` (the local emulator) uses no TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import certifi
from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSError,
    WSFrame,
    WSHandshakeError,
    WSListener,
    WSMsgType,
    WSProtocolError,
    WSTransport,
    ws_connect,
)

from k2.config import SourceSettings
from k2.errors import ConfigError, ExchangeUnreachable
from k2.logging import get_logger
from k2.metrics import WS_CONNECTED, WS_MESSAGES, WS_RECONNECTS
from k2.sources.base import RawFrame

log = get_logger(__name__)

FrameSink = Callable[[list[RawFrame]], Awaitable[None]]
"""Awaited once per batch of frames (oldest first, never empty); it suspends only to apply backpressure."""

# Binance counts every incoming message (JSON requests, pings, pongs) against 5 per second; leave
# room for a pong by spacing our control messages 250 ms apart.
CONTROL_MESSAGE_INTERVAL_S = 0.25
# Client keepalive: a ping after this long without incoming data detects a silently dead link
# (Binance also pings us every 20 s).
PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 20.0
MAX_MESSAGE_BYTES = 16 * 2**20
# Frames waiting for the sink before the socket stops being read (it is read again once taken).
MAX_BUFFERED_FRAMES = 20_000
CLOSE_TIMEOUT_S = 2.0
_COUNT_EVERY_US = 1_000_000  # WS_MESSAGES is updated once a second per connection, not per frame

_TEXT, _BINARY, _CONTINUATION, _CLOSE = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION, WSMsgType.CLOSE


def wall_clock_us() -> int:
    """Current UTC time in microseconds since the epoch."""
    return time.time_ns() // 1000


def ssl_context_for(url: str) -> ssl.SSLContext | None:
    """A verifying TLS context (certifi CA bundle, hostname checked) for ``wss://``; None for ``ws://``."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "ws":
        return None
    if scheme != "wss":
        raise ConfigError(f"not a WebSocket URL (ws:// or wss://): {url!r}")
    context = ssl.create_default_context(cafile=certifi.where())
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    return context


def backoff_delays(initial_s: float, max_s: float, rng: random.Random) -> Iterator[float]:
    """Full-jitter exponential backoff: uniform(0, min(max, initial * 2**n)) for n = 0, 1, ..."""
    ceiling = initial_s
    while True:
        yield rng.uniform(0.0, ceiling)
        ceiling = min(max_s, ceiling * 2)


def _short(url: str, limit: int = 160) -> str:
    return url if len(url) <= limit else url[: limit - 3] + "..."


def _describe(exc: BaseException) -> str:
    """A one-line description of a connection failure."""
    if isinstance(exc, WSHandshakeError) and exc.response is not None:
        return f"HTTP {int(exc.response.status)} at handshake"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = " ".join((str(exc) or type(exc).__name__).split())
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.errno:
        return f"{os.strerror(exc.errno)} ({text})"
    return text


class _Connection(WSListener):
    """One connection's receiving side, called by picows inside the transport's read callback.

    Data frames become :class:`RawFrame` in :attr:`frames` (fragmented messages are assembled);
    :attr:`arrived` is set when the first frame is waiting, and on disconnect: the session's receive
    loop then runs once the current read has been processed. Close frames are answered.
    """

    def __init__(self, clock_us: Callable[[], int], last_us: int) -> None:
        self.frames: list[RawFrame] = []
        self.arrived = asyncio.Event()
        self.disconnected = False
        self.transport: WSTransport | None = None
        self.last_us = last_us  # receive time of the newest frame (strictly increasing)
        self._clock_us = clock_us
        self._parts: list[bytes] = []  # fragments of a message being assembled
        self._parts_bytes = 0
        self._paused = False
        self._closing = False  # the session started closing (frames in flight are still data)
        self._closer: asyncio.TimerHandle | None = None

    # --- picows callbacks (the transport's thread and loop) --------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if transport.is_close_frame_sent and not self._closing:
            return  # picows closed the connection for a protocol error: nothing after it is data
        kind = frame.msg_type
        if (kind in (_TEXT, _BINARY)) and frame.fin and not self._parts:
            if frame.payload_size > MAX_MESSAGE_BYTES:  # picows checks too, but still hands the frame over
                raise WSProtocolError(WSCloseCode.MESSAGE_TOO_BIG, f"message over {MAX_MESSAGE_BYTES} bytes")
            payload = frame.get_payload_as_bytes()
        elif kind == _CLOSE:
            self._answer_close(transport)
            return
        elif kind in (_TEXT, _BINARY, _CONTINUATION):
            assembled = self._fragment(frame)
            if assembled is None:
                return
            payload = assembled
        else:  # pongs (pings are answered by picows)
            return
        now = self._clock_us()
        if now <= self.last_us:
            now = self.last_us + 1
        self.last_us = now
        frames = self.frames
        frames.append(RawFrame(payload, now))
        if len(frames) == 1:  # the receive loop runs once this read's callbacks are done, not per frame
            self.arrived.set()
        elif len(frames) >= MAX_BUFFERED_FRAMES and not self._paused:
            self._paused = True
            transport.underlying_transport.pause_reading()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.disconnected = True
        if self._closer is not None:
            self._closer.cancel()
        self.arrived.set()

    # --- the session's side ------------------------------------------------------------------------
    def take(self) -> list[RawFrame]:
        """Every frame waiting, oldest first; reading resumes if it was paused."""
        frames, self.frames = self.frames, []
        if self._paused and self.transport is not None and not self.disconnected:
            self._paused = False
            self.transport.underlying_transport.resume_reading()
        return frames

    def send_text(self, message: str) -> bool:
        """Send one text message; False when the connection is closing."""
        transport = self.transport
        if transport is None or self.disconnected or transport.is_close_frame_sent:
            return False
        transport.send(_TEXT, message.encode())
        return True

    def close(self, code: WSCloseCode = WSCloseCode.OK, reason: str = "") -> None:
        """Start the closing handshake; the connection is dropped if the peer does not answer in time."""
        transport = self.transport
        if transport is None or self.disconnected:
            return
        if not transport.is_close_frame_sent:
            self._closing = True
            transport.send_close(code, reason.encode())
        if self._closer is None:
            loop = asyncio.get_running_loop()
            self._closer = loop.call_later(CLOSE_TIMEOUT_S, transport.disconnect, False)

    def close_description(self) -> str:
        handshake = self.transport.close_handshake if self.transport is not None else None
        if handshake is not None and handshake.recv is not None:
            return f"closed with code {handshake.recv.code.value} {handshake.recv.reason!r}"
        if handshake is not None and handshake.sent is not None:
            return f"closed by K2 with code {handshake.sent.code.value} {handshake.sent.reason!r}"
        return "closed without a close frame (1006)"

    # --- internals -----------------------------------------------------------------------------------
    def _answer_close(self, transport: WSTransport) -> None:
        """The peer's close frame: echo its code (unless we started closing), then drop the socket."""
        if not transport.is_close_frame_sent:
            self._closing = True
            handshake = transport.close_handshake
            code = handshake.recv.code if handshake is not None and handshake.recv is not None else WSCloseCode.OK
            transport.send_close(WSCloseCode.OK if code == WSCloseCode.NO_INFO else code)
        transport.disconnect()

    def _fragment(self, frame: WSFrame) -> bytes | None:
        """Assemble a fragmented message; the whole message once its last fragment came. A broken
        sequence or an oversized message raises WSProtocolError: picows closes with its code."""
        starts = frame.msg_type != _CONTINUATION
        if starts == bool(self._parts):  # a new message inside one, or a continuation of nothing
            self._parts, self._parts_bytes = [], 0
            raise WSProtocolError(WSCloseCode.PROTOCOL_ERROR, "unexpected fragment")
        self._parts_bytes += frame.payload_size
        if self._parts_bytes > MAX_MESSAGE_BYTES:
            self._parts, self._parts_bytes = [], 0
            raise WSProtocolError(WSCloseCode.MESSAGE_TOO_BIG, f"message over {MAX_MESSAGE_BYTES} bytes")
        self._parts.append(frame.get_payload_as_bytes())
        if not frame.fin:
            return None
        message = b"".join(self._parts)
        self._parts, self._parts_bytes = [], 0
        return message


class WebSocketSession:
    """One WebSocket connection kept alive: ``await session.run(sink)`` until :meth:`stop`."""

    def __init__(
        self,
        url: str,
        *,
        venue: str,
        settings: SourceSettings,
        subscribe_messages: Sequence[str] = (),
        clock_us: Callable[[], int] = wall_clock_us,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.venue = venue
        self.settings = settings
        self._ssl = ssl_context_for(url)
        self._subscribe_messages = tuple(subscribe_messages)
        self._clock_us = clock_us
        self._rng = rng or random.Random()
        self._conn: _Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._stopping = False
        self._expired = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._log = log.bind(venue=venue, url=_short(url))
        # statistics
        self.connected = False
        self.connections = 0
        self.reconnects: dict[str, int] = {"dropped": 0, "error": 0, "max_age": 0}
        self.frames = 0
        self.last_frame_at_us: int | None = None
        self.connected_at_us: int | None = None
        self.failed_attempts = 0
        self.last_error: str | None = None

    # --- public -----------------------------------------------------------------------------------
    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`picows.ws_connect` (TLS context included)."""
        kwargs: dict[str, Any] = {
            "websocket_handshake_timeout": self.settings.open_timeout_s,
            "enable_auto_ping": True,
            "auto_ping_idle_timeout": PING_INTERVAL_S,
            "auto_ping_reply_timeout": PING_TIMEOUT_S,
            "auto_ping_strategy": WSAutoPingStrategy.PING_WHEN_IDLE,
            "enable_auto_pong": True,
            "max_frame_size": MAX_MESSAGE_BYTES,
            "logger_name": "session",
            # asyncio's own transports and CPython's ssl module (TLS verified as everywhere else): picows'
            # optional compiled transport (aiofastnet) measured no faster here (benchmarks/results/ws.md).
            "use_aiofastnet": False,
        }
        if self._ssl is not None:
            kwargs["ssl_context"] = self._ssl
        return kwargs

    def get_stats(self) -> dict[str, Any]:
        return {
            "venue": self.venue,
            "url": self.url,
            "connected": self.connected,
            "connections": self.connections,
            "reconnects": sum(self.reconnects.values()),
            "reconnects_by_reason": dict(self.reconnects),
            "frames": self.frames,
            "last_frame_at_us": self.last_frame_at_us,
            "connected_at_us": self.connected_at_us,
            "failed_attempts": self.failed_attempts,
            "last_error": self.last_error,
        }

    stats = property(get_stats)

    def stop(self) -> None:
        """Ask :meth:`run` to return: closes the connection and ends any backoff wait. Thread-safe."""
        self._stopping = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake()
        else:
            loop.call_soon_threadsafe(self._wake)

    async def run(self, sink: FrameSink) -> None:
        """Receive frames into ``sink`` until :meth:`stop`, reconnecting as needed."""
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        if self._stopping:
            return
        delays = self._new_backoff()
        failures = 0
        try:
            while not self._stopping:
                conn = _Connection(self._clock_us, self.last_frame_at_us or 0)
                try:
                    await self._connect(conn)
                except (OSError, TimeoutError, WSError) as exc:
                    if self._stopping:
                        break
                    failures += 1
                    self.failed_attempts = failures
                    self.last_error = _describe(exc)
                    limit = self.settings.max_connect_attempts
                    if limit is not None and failures >= limit:
                        where = _short(self.url)
                        raise ExchangeUnreachable(
                            f"cannot connect to {where} after {failures} attempt(s): {self.last_error}"
                        ) from exc
                    delay = next(delays)
                    WS_RECONNECTS.labels(venue=self.venue, reason="error").inc()
                    self.reconnects["error"] += 1
                    self._log.warning(
                        "ws.connect_failed",
                        attempt=failures,
                        error=self.last_error,
                        retry_in_s=round(delay, 3),
                    )
                    await self._pause(delay)
                    continue
                failures = 0
                self.failed_attempts = 0
                frames_before = self.frames
                reason = await self._receive(conn, sink)
                if reason is None:
                    break
                WS_RECONNECTS.labels(venue=self.venue, reason=reason).inc()
                self.reconnects[reason] += 1
                if reason == "max_age":
                    self._log.info("ws.max_age_reconnect", max_age_s=self.settings.max_connection_age_s)
                    continue
                if self.frames > frames_before:
                    delays = self._new_backoff()  # the connection worked: start the backoff over
                self._log.warning("ws.disconnected", reason=reason, detail=self.last_error)
                await self._pause(next(delays))
        finally:
            self._set_connected(False)
            for task in list(self._tasks):
                task.cancel()

    # --- internals --------------------------------------------------------------------------------
    async def _connect(self, conn: _Connection) -> None:
        """Open the connection (TCP, TLS, WebSocket handshake) within ``open_timeout_s``."""
        async with asyncio.timeout(self.settings.open_timeout_s):
            await ws_connect(lambda: conn, self.url, **self.connect_kwargs())

    def _new_backoff(self) -> Iterator[float]:
        return backoff_delays(self.settings.reconnect_initial_s, self.settings.reconnect_max_s, self._rng)

    def _wake(self) -> None:
        if self._stop_event is not None:
            self._stop_event.set()
        if self._conn is not None:
            self._conn.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pause(self, delay: float) -> None:
        assert self._stop_event is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), delay)

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        WS_CONNECTED.labels(venue=self.venue).set(1 if connected else 0)

    def _expire(self, conn: _Connection) -> None:
        self._expired = True
        conn.close(WSCloseCode.OK, "max connection age")

    async def _send_subscriptions(self, conn: _Connection) -> None:
        for i, message in enumerate(self._subscribe_messages):
            if i:
                await asyncio.sleep(CONTROL_MESSAGE_INTERVAL_S)
            if not self._send(conn, message):
                return  # the receive loop sees the close and reconnects

    def _send(self, conn: _Connection, message: str) -> bool:
        """Where a control message leaves the client (one place, so tests can time it)."""
        return conn.send_text(message)

    async def _receive(self, conn: _Connection, sink: FrameSink) -> str | None:
        """Pump one connection into ``sink`` in batches; returns why it ended (None when stopped)."""
        assert self._loop is not None
        assert conn.transport is not None
        self._conn = conn
        self._expired = False
        self.connections += 1
        self.connected_at_us = self._clock_us()
        self._set_connected(True)
        self._log.info("ws.connected", connection=self.connections)
        expiry = self._loop.call_later(self.settings.max_connection_age_s, self._expire, conn)
        if self._subscribe_messages:
            self._spawn(self._send_subscriptions(conn))
        if self._stopping:  # stop() raced with the handshake
            conn.close()
        messages = WS_MESSAGES.labels(venue=self.venue)
        counted = self.frames  # frames already added to the counter (updated at most once a second)
        count_at = 0
        loop = self._loop
        flusher: asyncio.TimerHandle

        def flush_count() -> None:  # so a connection gone quiet still reports its last frames
            nonlocal counted, count_at, flusher
            messages.inc(self.frames - counted)
            counted, count_at = self.frames, self._clock_us() + _COUNT_EVERY_US
            flusher = loop.call_later(_COUNT_EVERY_US / 1e6, flush_count)

        flusher = loop.call_later(_COUNT_EVERY_US / 1e6, flush_count)
        error: BaseException | None = None
        try:
            while True:
                if not conn.frames and not conn.disconnected:
                    await conn.arrived.wait()
                conn.arrived.clear()
                frames = conn.take()
                if not frames:
                    if conn.disconnected:
                        break
                    continue
                self.frames += len(frames)
                now = self.last_frame_at_us = frames[-1].received_at_us
                if now >= count_at:
                    messages.inc(self.frames - counted)
                    counted, count_at = self.frames, now + _COUNT_EVERY_US
                await sink(frames)
        finally:
            flusher.cancel()
            messages.inc(self.frames - counted)
            expiry.cancel()
            self._conn = None
            self._set_connected(False)
            conn.close()
            try:
                await conn.transport.wait_disconnected()
            except (OSError, WSError) as exc:  # a protocol violation picows closed the connection for
                error = exc
        if self._stopping:
            return None
        if error is not None:
            self.last_error = _describe(error)
            return "error"
        self.last_error = conn.close_description()
        return "max_age" if self._expired else "dropped"
