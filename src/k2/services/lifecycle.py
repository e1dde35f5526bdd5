"""What every streaming service shares: its WebSocket sessions, and running until a signal or a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from k2.config import K2Settings
from k2.metrics import serve_metrics
from k2.sources import RawFrame, VenueAdapter
from k2.sources.session import WebSocketSession

T = TypeVar("T")


def open_sessions(
    adapter: VenueAdapter, settings: K2Settings, ws_base_url: str | None
) -> tuple[list[str], list[WebSocketSession]]:
    """One session per stream URL the venue needs for the adapter's subscription."""
    source = settings.source
    urls = adapter.stream_urls(ws_base_url or source.ws_url)
    subscribe = adapter.subscribe_messages()
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


async def supervise(
    sessions: Sequence[WebSocketSession],
    sink: Callable[[RawFrame], Awaitable[None]],
    process: Callable[[], Coroutine[Any, Any, None]],
    stop: Callable[[], None],
    backfill: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Run the sessions (into ``sink``), the processor and the optional backfill task until ``stop()``
    (called here or by a signal handler) ends them, or one of them fails.

    ``process`` must return once the service is stopping and it has drained everything. The backfill
    task can still deliver rows then (a signal handler calls ``stop()`` directly), so when the
    processor returns the backfill task is cancelled and the processor runs once more to drain what
    it delivered; unfinished gaps stay OPEN and are found again on restart. A failure of a session or
    the processor is raised after that.
    """
    session_tasks = [asyncio.create_task(s.run(sink)) for s in sessions]
    helper = asyncio.create_task(backfill()) if backfill is not None else None

    async def drain() -> None:
        await process()
        if helper is not None:
            helper.cancel()
            await asyncio.gather(helper, return_exceptions=True)
            await process()  # whatever the backfill task delivered after the first drain

    processor = asyncio.create_task(drain())
    try:
        done, _ = await asyncio.wait([*session_tasks, processor], return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            exc = task.exception()
            if exc is not None:
                raise exc
    finally:
        stop()
        for task in session_tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*session_tasks, return_exceptions=True)
        try:
            await processor
        finally:
            if helper is not None and not helper.done():  # the processor failed before cancelling it
                helper.cancel()
                await asyncio.gather(helper, return_exceptions=True)


class FrameBacklog:
    """Frames received but not parsed yet: the sessions' sink, with backpressure.

    ``sink`` appends a frame and wakes the processor once ``batch_frames`` are waiting; when the
    backlog plus whatever the service still ``held()`` (rows buffered for a commit, say) reaches
    ``limit``, it suspends, which stops the session reading its socket. Nothing is dropped.
    """

    def __init__(self, batch_frames: int, limit: int, held: Callable[[], int] = lambda: 0) -> None:
        self.frames: list[RawFrame] = []
        self._batch_frames = batch_frames
        self._limit = limit
        self._held = held
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()

    def __len__(self) -> int:
        return len(self.frames)

    async def sink(self, frame: RawFrame) -> None:
        self.frames.append(frame)
        if len(self.frames) >= self._batch_frames:
            self._ready.set()
            if len(self.frames) + self._held() >= self._limit:
                self._space.clear()
                await self._space.wait()

    def take(self) -> list[RawFrame]:
        """Everything waiting, oldest first; the backlog is empty afterwards."""
        frames, self.frames = self.frames, []
        return frames

    def wake(self) -> None:
        """Wake :meth:`wait` now (e.g. to drain on stop)."""
        self._ready.set()

    async def wait(self, timeout_s: float) -> None:
        """Until a batch is ready, :meth:`wake` is called, or ``timeout_s`` passes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout=timeout_s)
        self._ready.clear()

    def release(self) -> None:
        """Let a suspended sink continue once the backlog is below its limit again."""
        if len(self.frames) + self._held() < self._limit:
            self._space.set()
