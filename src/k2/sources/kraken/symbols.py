"""Kraken symbols: ``BTC/USD`` natively (WebSocket v2), the same canonically; AssetPairs parsing. Pure.

Kraken spells one market several ways (``GET /0/public/AssetPairs``): the pair key ``XXBTZUSD`` (legacy
assets carry an ``X``/``Z`` class prefix), the ``altname`` ``XBTUSD``, the ``wsname`` ``XBT/USD`` (WebSocket
v1), and WebSocket v2's ``BTC/USD``, which writes Kraken's legacy asset codes ``XBT`` and ``XDG`` as
``BTC`` and ``DOGE``. K2 stores the v2 form, which is already the canonical ``BASE/QUOTE``. Prefixes are
never stripped by rule: ``XRP``, ``XLM``, ``XMR``, ``XTZ`` and ``ZEC`` are real codes, so every non-slash
spelling is looked up in AssetPairs (live, cached; offline, the real AssetPairs answer bundled with K2:
:mod:`k2.sources.kraken.asset_pairs`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from k2.errors import ConfigError
from k2.sources.symbols import UNKNOWN_ASSET, Instrument, SymbolInfo

ISO_CODES = {"XBT": "BTC", "XDG": "DOGE"}
"""Kraken's legacy asset codes (AssetPairs ``wsname``) that WebSocket v2 writes as ISO codes."""
LEGACY_CODES = {iso: legacy for legacy, iso in ISO_CODES.items()}
_ASSET = re.compile(r"[A-Z0-9][A-Z0-9.]{0,15}", re.ASCII)


class _Pair(msgspec.Struct):
    altname: str
    wsname: str | None = None


class _AssetPairs(msgspec.Struct):
    error: list[str]
    result: dict[str, _Pair] = {}


def v2_symbol(wsname: str) -> str:
    """WebSocket v2's symbol of a v1/AssetPairs ``wsname``: ``XBT/USD`` -> ``BTC/USD``."""
    base, _, quote = wsname.upper().partition("/")
    return f"{ISO_CODES.get(base, base)}/{ISO_CODES.get(quote, quote)}"


@dataclass(frozen=True, slots=True)
class AssetPair:
    """One pair of an AssetPairs answer: its key, its v2 symbol, and all its spellings (upper case)."""

    key: str  # XXBTZUSD
    symbol: str  # BTC/USD
    spellings: tuple[str, ...]  # XXBTZUSD, XBTUSD, XBT/USD, BTC/USD


def asset_pairs(payload: bytes) -> list[AssetPair]:
    """The pairs of an AssetPairs answer that K2 can subscribe (those with a ``wsname``; dark-pool pairs,
    ``.d``, have no WebSocket market). Raises ``msgspec`` errors on a body that is not an AssetPairs
    answer, ValueError on an error answer."""
    pairs = msgspec.json.decode(payload, type=_AssetPairs)
    if pairs.error:
        raise ValueError(f"AssetPairs answered {pairs.error}")
    out = []
    for key, pair in pairs.result.items():
        if pair.wsname is not None:
            symbol = v2_symbol(pair.wsname)
            spellings = tuple(dict.fromkeys(s.upper() for s in (key, pair.altname, pair.wsname, symbol)))
            out.append(AssetPair(key, symbol, spellings))
    return out


def parse_asset_pairs(payload: bytes) -> dict[str, SymbolInfo]:
    """Every spelling of every pair K2 can subscribe -> its v2 symbol and assets:
    ``{"XXBTZUSD": SymbolInfo("BTC/USD", "BTC", "USD"), "XBTUSD": ..., "XBT/USD": ..., "BTC/USD": ...}``.
    Raises as :func:`asset_pairs` does."""
    out: dict[str, SymbolInfo] = {}
    for pair in asset_pairs(payload):
        base, _, quote = pair.symbol.partition("/")
        out.update(dict.fromkeys(pair.spellings, SymbolInfo(pair.symbol, base, quote)))
    return out


class KrakenSymbols:
    """Kraken's symbol rules (:class:`k2.sources.venue.SymbolRules`) over AssetPairs ``pairs``
    (:func:`parse_asset_pairs`). ``strict``: refuse a ``BASE/QUOTE`` that AssetPairs does not list (live
    metadata is complete); offline, such a symbol is accepted, since newer pairs are missing from the
    bundled answer."""

    def __init__(self, pairs: Mapping[str, SymbolInfo], *, strict: bool = False) -> None:
        self._pairs = dict(pairs)
        self.strict = strict

    def native(self, text: str) -> str:
        candidate = text.strip().upper()
        if "/" in candidate:
            base, _, quote = candidate.partition("/")
            if not _ASSET.fullmatch(base) or not _ASSET.fullmatch(quote):
                raise ConfigError(f"invalid Kraken symbol {text!r}: BASE/QUOTE (BTC/USD), or a pair name (XBTUSD)")
            symbol = v2_symbol(candidate)
            if self.strict and symbol not in self._pairs:
                raise ConfigError(f"Kraken lists no pair {symbol!r} (AssetPairs)")
            return symbol
        info = self._pairs.get(candidate)
        if info is None:
            raise ConfigError(
                f"unknown Kraken pair {text!r}: give BASE/QUOTE (BTC/USD) or a name AssetPairs lists (XBTUSD, XXBTZUSD)"
            )
        return info.symbol

    def instrument(self, symbol: str) -> Instrument:
        base, sep, quote = symbol.partition("/")
        if not sep:
            return Instrument(symbol, UNKNOWN_ASSET)
        return Instrument(base, quote)

    def rest_pair(self, symbol: str) -> str:
        """The REST ``pair`` of a v2 symbol: the shortest pair name AssetPairs gives it (``BTC/USDT`` ->
        ``XBTUSDT``), else its assets in Kraken's legacy codes run together."""
        names = sorted((k for k, v in self._pairs.items() if v.symbol == symbol and "/" not in k), key=len)
        if names:
            return names[0]
        base, _, quote = symbol.partition("/")
        return LEGACY_CODES.get(base, base) + LEGACY_CODES.get(quote, quote)
