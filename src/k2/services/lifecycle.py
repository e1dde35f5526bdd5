"""What every streaming service shares: running until a signal or a deadline, with /metrics served."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

from k2.config import K2Settings
from k2.metrics import serve_metrics

T = TypeVar("T")


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
