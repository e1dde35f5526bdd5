"""What every streaming service shares: its WebSocket sessions, and running until a signal or a deadline.

Signals, crash-only: the first SIGINT or SIGTERM asks the service to stop (it drains what it holds
and exits 0); from then on both signals are back to the system's default action, so a second one
ends the process at once, whatever it is doing (a flush waiting for a dead broker, a long
computation in C code). Nothing K2 writes depends on a clean exit: offsets live in the Iceberg
commits and restarts find their gaps, so ending a process at any moment loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from types import FrameType
from typing import Any, TypeVar

from k2.config import K2Settings
from k2.logging import get_logger
from k2.metrics import serve_metrics
from k2.sources import RawFrame, VenueAdapter
from k2.sources.session import WebSocketSession

T = TypeVar("T")

log = get_logger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(
    stop: Callable[[], None], loop: asyncio.AbstractEventLoop | None = None
) -> Iterator[list[signal.Signals]]:
    """While inside: the first SIGINT/SIGTERM calls ``stop`` (on ``loop``'s thread when given, else in
    the signal handler itself, so it must then only set flags); a second one ends the process at
    once (the default action is restored for both signals by the first). Yields the list of signals
    received. Outside the main thread (no signal handlers there) it only yields."""
    received: list[signal.Signals] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def first(signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        received.append(sig)
        for other in STOP_SIGNALS:  # a second signal: the system's default, immediate end
            signal.signal(other, signal.SIG_DFL)
        if loop is None:
            stop()
        else:  # logging is not safe inside a signal handler; the loop's callback does it
            loop.call_soon_threadsafe(_stopping, sig, stop)

    previous = {sig: signal.signal(sig, first) for sig in STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopping(sig: signal.Signals, stop: Callable[[], None]) -> None:
    log.warning("service.stopping", signal=sig.name, note="draining; a second signal ends the process at once")
    stop()


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
    """Serve /metrics if configured, stop on SIGINT/SIGTERM (see :func:`stop_on_signals`) or after
    ``duration_s``, and run."""
    if settings.metrics.port is not None:
        serve_metrics(settings.metrics.port, settings.metrics.host)
    loop = asyncio.get_running_loop()
    if duration_s is not None:
        loop.call_later(duration_s, stop)
    with stop_on_signals(stop, loop):
        return await run()


async def run_until_signal(serve: Callable[[], Awaitable[object]]) -> None:
    """Run ``serve`` (e.g. the emulator, which serves until cancelled) until SIGINT/SIGTERM, then cancel it."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    task = asyncio.ensure_future(serve())
    with stop_on_signals(stopped.set, loop):
        waiter = asyncio.ensure_future(stopped.wait())
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task  # a failure of ``serve`` is raised here


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
