"""Which feeds a run has: one per venue of ``source.venues`` (or ``source.venue``), each with its symbols,
record kinds and URLs resolved from the settings (docs/venues.md, "Several venues in one process").

Pure apart from the venue registry lookup. The services build one :class:`~k2.feed.feed.VenueFeed` per
:class:`FeedSpec` and run them all in one :class:`~k2.feed.runner.FeedRunner` (one loop, one flush rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from k2.config import FeedSettings, SourceSettings
from k2.errors import ConfigError
from k2.schema.kinds import RecordKind
from k2.sources import load_venue
from k2.sources.venue import Venue


@dataclass(frozen=True)
class FeedSpec:
    """One venue's part of a run, as configured."""

    venue: Venue
    symbols: tuple[str, ...]  # as the user gave them (venue-native or BASE/QUOTE): the venue validates them
    kinds: tuple[RecordKind, ...]
    ws_url: str | None  # None: the venue's own live URL
    rest_url: str | None

    @property
    def name(self) -> str:
        return self.venue.name


def feed_specs(
    source: SourceSettings,
    *,
    kinds: Sequence[RecordKind] | None = None,
    ws_url: str | None = None,
    rest_url: str | None = None,
) -> list[FeedSpec]:
    """The feeds of a run, in ``source.venue_names`` order.

    Kinds: a venue's own (``source.feeds.<venue>.kinds``) must all be served by it; the shared ones
    (``kinds``, else ``source.kinds``) too when one venue runs, and with several each venue takes those
    it serves (ConfigError when it serves none). URLs, first set wins: the venue's own, the
    ``ws_url``/``rest_url`` arguments, the ``source`` section's, the venue's live default.
    """
    names = source.venue_names
    specs: list[FeedSpec] = []
    seen: dict[str, str] = {}
    for name in names:
        venue = load_venue(name)
        if venue.exchange in seen:
            raise ConfigError(f"venues {seen[venue.exchange]} and {name} both write exchange {venue.exchange}")
        seen[venue.exchange] = name
        own = source.feeds.get(name, FeedSettings())
        merged = source.feed(name)
        if own.kinds is not None:
            wanted, strict = tuple(RecordKind(k) for k in own.kinds), True
        else:
            shared = kinds if kinds is not None else tuple(RecordKind(k) for k in source.kinds)
            wanted, strict = tuple(shared), len(names) == 1
        chosen = tuple(k for k in wanted if k in venue.kinds)
        served = ", ".join(k.value for k in venue.kinds)
        if strict and chosen != wanted:
            missing = ", ".join(k.value for k in wanted if k not in chosen)
            raise ConfigError(f"{name} does not serve {missing} (it serves {served})")
        if not chosen:
            raise ConfigError(f"{name} serves none of {', '.join(k.value for k in wanted)} (it serves {served})")
        assert merged.symbols is not None  # filled from the section
        specs.append(
            FeedSpec(
                venue=venue,
                symbols=merged.symbols,
                kinds=chosen,
                ws_url=own.ws_url or ws_url or source.ws_url,
                rest_url=own.rest_url or rest_url or source.rest_url,
            )
        )
    return specs


__all__ = ["FeedSpec", "feed_specs"]
