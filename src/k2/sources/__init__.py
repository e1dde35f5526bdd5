"""Exchange sources: pure venue parsers (adapters) and the shared WebSocket session.

Adapters are registered by name and imported lazily, the way pyiceberg loads catalog backends, so
adding a venue means adding a module and one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from k2.errors import ConfigError
from k2.sources.base import DataType, ParsedBatch, RawFrame, Rejected, RejectReason, VenueAdapter

ADAPTERS: dict[str, str] = {
    "binance": "k2.sources.binance:BinanceAdapter",
}


def load_adapter(venue: str, symbols: Sequence[str], **kwargs: Any) -> VenueAdapter:
    """Instantiate the adapter registered for ``venue``, subscribed to ``symbols`` (trades unless
    ``data_types`` says otherwise); it quarantines frames of any other stream."""
    target = ADAPTERS.get(venue.lower())
    if target is None:
        raise ConfigError(f"unknown venue {venue!r}; supported: {', '.join(sorted(ADAPTERS))}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # an optional dependency of that venue is missing
        raise ConfigError(f"venue {venue!r} needs a missing dependency: {exc}") from exc
    adapter: VenueAdapter = getattr(module, class_name)(symbols, **kwargs)
    return adapter


__all__ = [
    "ADAPTERS",
    "DataType",
    "ParsedBatch",
    "RawFrame",
    "RejectReason",
    "Rejected",
    "VenueAdapter",
    "load_adapter",
]
