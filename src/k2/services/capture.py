"""`k2 capture`: record a venue's raw frames, with receive times, to a recording the emulator replays.

Connects to the stream URLs the venue's parser asks for (the venue's own live URL by default, or any
compatible base URL such as the emulator's) and runs the one feed runner with a
:class:`~k2.feed.capture.RecordingSink`. Stops after ``max_frames`` frames, after ``duration_s``
seconds, or on a signal; the file is always closed properly.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from k2.config import K2Settings
from k2.errors import ConfigError
from k2.feed.capture import RawFeed, RecordingSink
from k2.feed.runner import FeedRunner
from k2.feed.venues import feed_specs
from k2.logging import get_logger
from k2.services.lifecycle import stop_on_signals
from k2.sources.session import WebSocketSession

log = get_logger(__name__)


async def capture(
    settings: K2Settings,
    out: Path,
    *,
    url: str | None = None,
    max_frames: int | None = None,
    duration_s: float | None = None,
) -> int:
    """Record raw frames to ``out`` (``.jsonl.gz``); returns the number of frames written."""
    if max_frames is not None and max_frames <= 0:
        raise ConfigError("max_frames must be positive")
    if duration_s is not None and duration_s <= 0:
        raise ConfigError("duration_s must be positive")
    source = settings.source
    specs = feed_specs(source, ws_url=url)
    if len(specs) != 1:
        raise ConfigError("a recording holds one venue's frames: capture one venue at a time")
    (spec,) = specs
    venue = spec.venue
    parser = venue.build_parser(
        spec.symbols, spec.kinds, rules=venue.rules(), validation=source.validation, is_sample_data=False
    )
    urls = parser.stream_urls(spec.ws_url or venue.ws_url)
    subscribe = parser.subscribe_messages()
    sessions = [WebSocketSession(u, venue=venue.name, settings=source, subscribe_messages=subscribe) for u in urls]
    sink = RecordingSink(out, max_frames)
    runner = FeedRunner([RawFeed(venue, parser, sessions)], sink, flush_rows=1, flush_seconds=1.0)
    log.info("capture.start", venue=venue.name, symbols=list(parser.symbols), out=str(out))
    timer = asyncio.get_running_loop().call_later(duration_s, runner.stop) if duration_s is not None else None
    try:
        with stop_on_signals(runner.stop, asyncio.get_running_loop()):  # a signal ends the recording cleanly
            await runner.run()
    finally:
        if timer is not None:
            timer.cancel()
    log.info("capture.done", frames=sink.frames, out=str(out))
    return sink.frames
