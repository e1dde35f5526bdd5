"""The shared WebSocket session: connect, receive, time-stamp, reconnect. I/O lives here, at the edge.

A :class:`WebSocketSession` owns one URL. It hands every frame, as bytes with its UTC receive time
in microseconds (taken right at receipt), to an async sink, and awaits the sink: a sink that
suspends applies backpressure (the socket is read no faster than the sink accepts frames). Receive
times of one session strictly increase (a frame read in the same microsecond as the one before is
stamped one microsecond later), so ordering rows by receive time gives the wire order exactly: the
trade-quote as-of join relies on it (docs/query.md).

Reconnect policy: exponential backoff with full jitter between ``reconnect_initial_s`` and
``reconnect_max_s``, reset after a connection that delivered frames; a connection that reaches
``max_connection_age_s`` is replaced at once (Binance closes them after 24 h). A drop is logged once
and counted in ``k2_ws_reconnects_total{reason}`` with reason ``dropped`` (the peer or network closed
it), ``max_age`` or ``error`` (a failed connection attempt or an unexpected failure while
receiving). Only ``max_connect_attempts`` consecutive failed attempts are fatal
(:class:`~k2.errors.ExchangeUnreachable`).

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
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException
from websockets.protocol import State

from k2.config import SourceSettings
from k2.errors import ConfigError, ExchangeUnreachable
from k2.logging import get_logger
from k2.metrics import WS_CONNECTED, WS_MESSAGES, WS_RECONNECTS
from k2.sources.base import RawFrame

log = get_logger(__name__)

FrameSink = Callable[[RawFrame], Awaitable[None]]
"""Awaited once per frame; it suspends only to apply backpressure."""

# Binance counts every incoming message (JSON requests, pings, pongs) against 5 per second; leave
# room for a pong by spacing our control messages 250 ms apart.
CONTROL_MESSAGE_INTERVAL_S = 0.25
# Client keepalive: detects a silently dead link (Binance also pings us every 20 s).
PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 20.0
MAX_MESSAGE_BYTES = 16 * 2**20
# Frames buffered by websockets before it stops reading the socket (high, low water marks).
MAX_QUEUE = (1024, 256)
CLOSE_TIMEOUT_S = 2.0
_COUNT_EVERY_US = 1_000_000  # WS_MESSAGES is updated once a second per connection, not per frame

_CONNECT_ERRORS = (OSError, TimeoutError, WebSocketException)


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
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code} at handshake"
    if isinstance(exc, ConnectionClosed):
        rcvd = exc.rcvd
        return f"closed with code {rcvd.code} {rcvd.reason!r}" if rcvd else "closed without a close frame (1006)"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = " ".join((str(exc) or type(exc).__name__).split())
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.errno:
        return f"{os.strerror(exc.errno)} ({text})"
    return text


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
        self._ws: ClientConnection | None = None
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
        """Keyword arguments for :func:`websockets.asyncio.client.connect` (TLS context included)."""
        kwargs: dict[str, Any] = {
            "open_timeout": self.settings.open_timeout_s,
            "ping_interval": PING_INTERVAL_S,
            "ping_timeout": PING_TIMEOUT_S,
            "close_timeout": CLOSE_TIMEOUT_S,
            "max_size": MAX_MESSAGE_BYTES,
            "max_queue": MAX_QUEUE,
            "compression": None,
        }
        if self._ssl is not None:
            kwargs["ssl"] = self._ssl
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
                try:
                    ws = await connect(self.url, **self.connect_kwargs())
                except InvalidURI as exc:
                    raise ConfigError(f"invalid WebSocket URL {self.url!r}: {exc}") from exc
                except _CONNECT_ERRORS as exc:
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
                reason = await self._receive(ws, sink)
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
    def _new_backoff(self) -> Iterator[float]:
        return backoff_delays(self.settings.reconnect_initial_s, self.settings.reconnect_max_s, self._rng)

    def _wake(self) -> None:
        if self._stop_event is not None:
            self._stop_event.set()
        if self._ws is not None:
            self._spawn(self._ws.close())

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

    def _expire(self, ws: ClientConnection) -> None:
        self._expired = True
        self._spawn(ws.close(1000, "max connection age"))

    async def _send_subscriptions(self, ws: ClientConnection) -> None:
        try:
            for i, message in enumerate(self._subscribe_messages):
                if i:
                    await asyncio.sleep(CONTROL_MESSAGE_INTERVAL_S)
                await ws.send(message)
        except ConnectionClosed:
            pass  # the receive loop sees the close and reconnects

    async def _receive(self, ws: ClientConnection, sink: FrameSink) -> str | None:
        """Pump one connection into ``sink``; returns why it ended (None when stopped)."""
        assert self._loop is not None
        self._ws = ws
        self._expired = False
        self.connections += 1
        self.connected_at_us = self._clock_us()
        self._set_connected(True)
        self._log.info("ws.connected", connection=self.connections)
        expiry = self._loop.call_later(self.settings.max_connection_age_s, self._expire, ws)
        if self._subscribe_messages:
            self._spawn(self._send_subscriptions(ws))
        if self._stopping:  # stop() raced with the handshake
            self._spawn(ws.close())
        messages = WS_MESSAGES.labels(venue=self.venue)
        clock = self._clock_us
        recv = ws.recv
        counted = self.frames  # frames already added to the counter (updated at most once a second)
        count_at = 0
        loop = self._loop
        flusher: asyncio.TimerHandle

        def flush_count() -> None:  # so a connection gone quiet still reports its last frames
            nonlocal counted, count_at, flusher
            messages.inc(self.frames - counted)
            counted, count_at = self.frames, clock() + _COUNT_EVERY_US
            flusher = loop.call_later(_COUNT_EVERY_US / 1e6, flush_count)

        flusher = loop.call_later(_COUNT_EVERY_US / 1e6, flush_count)
        last = self.last_frame_at_us or 0
        try:
            while True:
                payload = await recv(False)
                now = clock()
                if now <= last:  # strictly increasing: receive-time order is this connection's wire order
                    now = last + 1
                last = now
                self.frames += 1
                self.last_frame_at_us = now
                if now >= count_at:
                    messages.inc(self.frames - counted)
                    counted, count_at = self.frames, now + _COUNT_EVERY_US
                await sink(RawFrame(payload, now))
        except ConnectionClosed as exc:
            if self._stopping:
                return None
            self.last_error = _describe(exc)
            return "max_age" if self._expired else "dropped"
        except (OSError, WebSocketException) as exc:
            self.last_error = _describe(exc)
            return "error"
        finally:
            flusher.cancel()
            messages.inc(self.frames - counted)
            expiry.cancel()
            self._ws = None
            self._set_connected(False)
            if ws.state is not State.CLOSED:
                await ws.close()
