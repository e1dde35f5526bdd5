"""Canonical instruments across the registered venues: which venue symbols are ``BTC/USDT``, and the other way.

The feed stamps every trade and quote with its canonical ``instrument`` (``k2.feed.stamp``), so a query
selects one instrument on every venue by that column. Trades stored before the column existed
(trade schema v2) hold null there; the query engine finds them by what each registered venue's symbol
rules say instead: :func:`legacy_keys` names the ``EXCHANGE:SYMBOL`` of each venue symbol of an
instrument, :func:`instruments_of` gives the instrument of stored (exchange, symbol) pairs. The venues'
offline rules are used (no network): Binance splits at the longest known quote asset, as on ingest
when exchangeInfo cannot be had (docs/venues.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from k2.errors import ConfigError
from k2.sources import load_venue, venue_names
from k2.sources.symbols import Instrument
from k2.sources.venue import Venue


def canonical(text: str) -> str:
    """``text`` as a canonical instrument name (``btc/usdt`` -> ``BTC/USDT``); ConfigError otherwise."""
    parsed = Instrument.parse(text) if isinstance(text, str) else None
    if parsed is None:
        raise ConfigError(f"invalid instrument {text!r}: BASE/QUOTE, e.g. BTC/USDT")
    return parsed.name


def _venues() -> Iterator[Venue]:
    for name in venue_names():
        try:
            yield load_venue(name)
        except ConfigError:  # a venue whose optional dependency is missing: it wrote no rows here
            continue


def legacy_keys(instrument: str) -> tuple[str, ...]:
    """``EXCHANGE:SYMBOL`` of every registered venue's symbol of ``instrument`` (canonical), sorted."""
    keys: set[str] = set()
    for venue in _venues():
        rules = venue.rules()
        try:
            native = rules.native(instrument)
            if rules.instrument(native).name != instrument:
                continue
        except ConfigError:
            continue
        keys.add(f"{venue.exchange}:{native}")
    return tuple(sorted(keys))


def instruments_of(pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
    """The canonical instrument of each (exchange, symbol), by its venue's rules; None for an exchange
    no registered venue writes."""
    by_exchange = {venue.exchange: venue.rules() for venue in _venues()}
    out: dict[tuple[str, str], str | None] = {}
    for exchange, symbol in pairs:
        rules = by_exchange.get(exchange)
        out[(exchange, symbol)] = None if rules is None else rules.instrument(symbol).name
    return out


__all__ = ["canonical", "instruments_of", "legacy_keys"]
