"""What every streaming service shares: its WebSocket sessions, and running until a signal or a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

from k2.config import K2Settings
from k2.metrics import serve_metrics
from k2.sources import DataType, VenueAdapter
from k2.sources.session import WebSocketSession

T = TypeVar("T")


def open_sessions(
    adapter: VenueAdapter, settings: K2Settings, ws_base_url: str | None
) -> tuple[list[str], list[WebSocketSession]]:
    """One session per stream URL the venue needs for the configured symbols (trades)."""
    source = settings.source
    urls = adapter.stream_urls(ws_base_url or source.ws_url, source.symbols, [DataType.TRADES])
    subscribe = adapter.subscribe_messages(source.symbols, [DataType.TRADES])
    sessions = [
        WebSocketSession(url, venue=adapter.venue, settings=source, subscribe_messages=subscribe) for url in urls
    ]
    return urls, sessions


async def run_until_stopped(
    run: Callable[[], Awaitable[T]], stop: Callable[[], None], settings: K2Settings, duration_s: float | None
) -> T:
    """Serve /metrics if configured, stop on SIGINT/SIGTERM or after ``duration_s``, and run."""
    if settings.metrics.port is not None:
        serve_metrics(settings.metrics.port, settings.metrics.host)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)
    if duration_s is not None:
        loop.call_later(duration_s, stop)
    return await run()
