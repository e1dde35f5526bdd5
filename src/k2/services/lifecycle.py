"""What every streaming service shares: running until a signal or a deadline, with /metrics served.

Signals, crash-only: the first SIGINT or SIGTERM asks the service to stop (it drains what it holds
and exits 0); from then on both signals are back to the system's default action, so a second one
ends the process at once, whatever it is doing (a flush waiting for a dead broker, a long
computation in C code). Nothing K2 writes depends on a clean exit: offsets live in the Iceberg
commits and restarts find their gaps, so ending a process at any moment loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType
from typing import TypeVar

from k2.config import K2Settings
from k2.logging import get_logger
from k2.metrics import serve_metrics

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


def freeze_start_up() -> None:
    """In a service's own process (``k2 run``, ``k2 ingest``, ``k2 consume``), once start-up is done:
    move every object that exists (modules, settings, clients) out of the collector's generations
    (``gc.freeze``), so that the collections the pipeline's allocations trigger stop walking them.
    Measured: about 1.2x the embedded pipeline's throughput (BENCHMARKS.md). Not for a process that
    runs many pipelines one after another (a test run; the test suite unfreezes after each test): what
    is frozen is never collected. The garbage start-up left is collected first, so that it is freed
    rather than frozen."""
    gc.collect()
    gc.freeze()


def _stopping(sig: signal.Signals, stop: Callable[[], None]) -> None:
    log.warning("service.stopping", signal=sig.name, note="draining; a second signal ends the process at once")
    stop()


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
