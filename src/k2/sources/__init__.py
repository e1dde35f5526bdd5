"""Exchange sources: one plug per venue (:class:`~k2.sources.venue.Venue`), the shared WebSocket session,
REST client, validation and column builders.

Venues are registered by name and imported lazily, the way pyiceberg loads catalog backends: adding
a venue means adding its package and one line in :data:`VENUES` (docs/venues.md). A venue defined
elsewhere (a test, a plugin) joins the registry with :func:`register_venue`.
"""

from __future__ import annotations

import importlib

from k2.errors import ConfigError
from k2.sources.base import ParsedBatch, RawFrame, Rejected, RejectReason
from k2.sources.venue import Venue, VenueParser

VENUES: dict[str, str] = {
    "binance": "k2.sources.binance:VENUE",
    "coinbase": "k2.sources.coinbase:VENUE",
}
"""Venue name -> ``module:attribute`` of its :class:`Venue`."""

_registered: dict[str, Venue] = {}


def register_venue(venue: Venue) -> None:
    """Make ``venue`` loadable by name in this process (for venues defined outside ``k2.sources``)."""
    _registered[venue.name] = venue


def venue_names() -> list[str]:
    return sorted({*VENUES, *_registered})


def load_venue(name: str) -> Venue:
    """The venue registered as ``name`` (case-insensitive)."""
    key = name.strip().lower()
    if key in _registered:
        return _registered[key]
    target = VENUES.get(key)
    if target is None:
        raise ConfigError(f"unknown venue {name!r}; supported: {', '.join(venue_names())}")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # an optional dependency of that venue is missing
        raise ConfigError(f"venue {name!r} needs a missing dependency: {exc}") from exc
    venue: Venue = getattr(module, attr)
    return venue


__all__ = [
    "VENUES",
    "ParsedBatch",
    "RawFrame",
    "RejectReason",
    "Rejected",
    "Venue",
    "VenueParser",
    "load_venue",
    "register_venue",
    "venue_names",
]
