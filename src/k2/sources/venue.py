"""A venue is one plug: everything K2 knows about an exchange, in one registry entry.

:class:`Venue` bundles, for one exchange: its pure parsers (one per record kind it serves, routed on
the stream or channel name), its symbol rules (venue-native symbols, the canonical ``BASE/QUOTE``
instrument beside them), its REST backfill fetcher, its connection limits and defaults (URLs,
control-message rate, connection age, streams per connection), and its emulator protocol. The
pipeline, the emulator and the CLI look a venue up by name (:func:`k2.sources.load_venue`) and never
branch on which one it is. docs/venues.md lists the steps to add one.

Pure: building a :class:`Venue` or a parser touches no socket, file, clock or environment variable.
The backfill fetcher and the emulator protocol do I/O, so the entry names them by import path and
they are imported only when used (the way pyiceberg loads catalog backends).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from k2.config import K2Settings, ValidationSettings
from k2.errors import ConfigError
from k2.schema.kinds import RecordKind
from k2.sources.base import ParsedBatch, RawFrame
from k2.sources.symbols import Instrument, SymbolInfo

if TYPE_CHECKING:
    from k2.quality.sequence import Gap


@dataclass(frozen=True)
class ConnectionLimits:
    """What the venue allows a WebSocket client (and what K2 does at each limit: docs/venues.md)."""

    max_streams_per_connection: int  # K2 opens another connection past it
    control_messages_per_s: float  # K2 spaces its subscribe messages below it
    max_connection_age_s: float  # the venue closes older connections; K2 reconnects before


class Subscription(Protocol):
    """What one venue parser was built for: symbols (venue-native) x record kinds."""

    symbols: tuple[str, ...]
    kinds: tuple[RecordKind, ...]


class VenueParser(Protocol):
    """One venue's wire protocol for one subscription. Pure.

    ``stream_urls`` and ``subscribe_messages`` ask the venue for exactly the subscription; ``parse``
    turns frames into canonical rows per kind (without the pipeline columns ``platform_sequence``,
    ``is_sample_data`` and ``instrument``: the feed stamps those after deduplication, the instrument
    from :meth:`SymbolRules.instrument`), quarantining every frame it
    cannot store with a reason, including frames of streams outside the subscription.
    """

    symbols: tuple[str, ...]
    kinds: tuple[RecordKind, ...]

    def stream_urls(self, base_url: str) -> list[str]: ...

    def subscribe_messages(self) -> list[str]: ...

    def parse(self, frames: Sequence[RawFrame]) -> ParsedBatch: ...


class SymbolRules(Protocol):
    """A venue's symbols: validation of what a user typed, and the canonical instrument of each."""

    def native(self, text: str) -> str:
        """The venue's own symbol for ``text`` (venue-native or canonical ``BASE/QUOTE``); ConfigError if invalid."""
        ...

    def instrument(self, symbol: str) -> Instrument:
        """The canonical instrument of a venue-native symbol."""
        ...


ParserFactory = Callable[..., VenueParser]
"""``factory(symbols, kinds, *, rules, validation, is_sample_data) -> VenueParser``."""


@dataclass(frozen=True, slots=True)
class FetchedTrades:
    """One REST page of trades, parsed: canonical rows in wire form (None when none passed), the
    ids of those rows, and the page's rejected elements (quarantined like stream frames)."""

    batch: pa.RecordBatch | None
    ids: list[int]
    parsed: ParsedBatch


class TradeFetcher(Protocol):
    """A venue's REST trade backfill (I/O). ``page`` answers trades of ``gap``'s stream with ids from
    ``from_id`` on (at most ``limit``), retried through the venue's rate limits and transient faults;
    :class:`~k2.errors.K2Error` when it gives up. Built by the venue's ``backfill`` factory:
    ``factory(settings, rules, rest_url) -> TradeFetcher``."""

    async def page(self, gap: Gap, from_id: int, limit: int) -> FetchedTrades: ...

    def clock_us(self) -> int: ...

    async def aclose(self) -> None: ...


SymbolRulesFactory = Callable[[Mapping[str, SymbolInfo] | None], SymbolRules]
"""``factory(metadata)``: the venue's rules, with the symbol metadata fetched live (None: offline)."""


@dataclass(frozen=True)
class Venue:
    """One exchange, everything K2 needs of it (see the module docstring)."""

    name: str  # registry name, lower case: "binance"; also the topic suffix and metric label
    exchange: str  # the ``exchange`` column: "BINANCE"
    asset_class: str  # "crypto"
    ws_url: str  # live WebSocket base URL
    rest_url: str | None  # live REST base URL (symbol metadata, backfill); None: the venue has none K2 uses
    kinds: tuple[RecordKind, ...]  # record kinds it serves
    streams: Mapping[RecordKind, str]  # kind -> the venue's stream/channel name (quality events' ``stream``)
    limits: ConnectionLimits
    parser: ParserFactory
    symbol_rules: SymbolRulesFactory
    metadata: str | None = None  # "module:loader" fetching live symbol metadata: loader(settings) -> {symbol: info}
    backfill: str | None = None  # "module:factory" of its REST trade backfill (a TradeFetcher factory)
    emulator: str | None = None  # "module:Class" of its emulator protocol (k2.emulator)

    def rules(self, metadata: Mapping[str, SymbolInfo] | None = None) -> SymbolRules:
        """The venue's symbol rules (with live metadata when given, else its offline rule)."""
        return self.symbol_rules(metadata)

    def fetcher(self, settings: K2Settings, rules: SymbolRules, rest_url: str | None = None) -> TradeFetcher:
        """Its REST trade backfill against ``rest_url`` (default: the settings' or the venue's URL)."""
        factory = self.load("backfill")
        url = rest_url or self.rest_url
        if url is None:
            raise ConfigError(f"venue {self.name!r} has no REST URL for backfill")
        fetcher: TradeFetcher = factory(settings, rules, url)
        return fetcher

    def build_parser(
        self,
        symbols: Sequence[str],
        kinds: Sequence[RecordKind],
        *,
        rules: SymbolRules,
        validation: ValidationSettings,
        is_sample_data: bool,
        **options: Any,
    ) -> VenueParser:
        """A parser for ``symbols`` (venue-native or canonical; validated by ``rules``) x ``kinds``
        (each one the venue serves); ``options`` are the venue parser's own (e.g. Binance's
        ``time_unit``)."""
        unknown = [k.value for k in kinds if k not in self.kinds]
        if unknown:
            served = ", ".join(k.value for k in self.kinds)
            raise ConfigError(f"{self.name} does not serve {', '.join(unknown)} (it serves {served})")
        native = tuple(dict.fromkeys(rules.native(s) for s in symbols))
        return self.parser(
            native, tuple(kinds), rules=rules, validation=validation, is_sample_data=is_sample_data, **options
        )

    def load(self, what: str) -> Any:
        """The object named by this venue's ``metadata``, ``backfill`` or ``emulator`` import path."""
        target = getattr(self, what)
        if target is None:
            raise ConfigError(f"venue {self.name!r} has no {what}")
        module_name, _, attr = target.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except ImportError as exc:
            raise ConfigError(f"venue {self.name!r} needs a missing dependency for its {what}: {exc}") from exc
