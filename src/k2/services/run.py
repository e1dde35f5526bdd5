"""`k2 run`: the embedded pipeline against a live venue (or any compatible URL, e.g. the emulator)."""

from __future__ import annotations

import asyncio

from k2.config import K2Settings
from k2.logging import get_logger
from k2.services.lifecycle import run_until_stopped
from k2.services.maintain import k2_tables, scheduled_maintenance
from k2.services.pipeline import EmbeddedPipeline, PipelineStats
from k2.sources import load_venue
from k2.sources.symbols import SymbolInfo

log = get_logger(__name__)


def resolve_symbol_info(settings: K2Settings) -> dict[str, dict[str, SymbolInfo] | None]:
    """Per venue of the run, its live symbol metadata (e.g. Binance exchangeInfo, cached) from its REST
    URL; None (the venue's documented offline rule) when the venue has none or it cannot be had."""
    out: dict[str, dict[str, SymbolInfo] | None] = {}
    for name in settings.source.venue_names:
        venue = load_venue(name)
        url = settings.source.feed(name).rest_url or venue.rest_url
        if venue.metadata is None or url is None:
            out[name] = None
            continue
        loader = venue.load("metadata")
        out[name] = loader(settings, url)
    return out


async def run_pipeline(
    settings: K2Settings,
    *,
    ws_base_url: str | None = None,
    duration_s: float | None = None,
    is_sample_data: bool = False,
    fetch_symbol_info: bool = True,
    serve: bool = False,
) -> PipelineStats:
    """Run the embedded pipeline until SIGINT/SIGTERM or ``duration_s``; commit everything received.

    ``serve``: also run the REST API and dashboard (settings.api) in this process, in its own thread
    and event loop (k2.services.serve.ApiServer), reporting the pipeline's own metrics.
    """
    info = resolve_symbol_info(settings) if fetch_symbol_info else None
    pipeline = EmbeddedPipeline(settings, ws_base_url=ws_base_url, is_sample_data=is_sample_data, symbol_info=info)
    with scheduled_maintenance(settings, k2_tables(settings)):  # off the commit path, docs/lake.md
        if not serve:
            return await run_until_stopped(pipeline.run, pipeline.stop, settings, duration_s)
        from k2.services.serve import ApiServer

        api = ApiServer(settings, process_metrics=True)
        await asyncio.to_thread(api.start)
        try:
            return await run_until_stopped(pipeline.run, pipeline.stop, settings, duration_s)
        finally:
            await asyncio.to_thread(api.stop)
