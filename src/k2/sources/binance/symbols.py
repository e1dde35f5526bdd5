"""Binance spot symbols: ``BTCUSDT`` natively, ``BTC/USDT`` canonically; exchangeInfo metadata. Pure.

Binance writes a symbol as base and quote assets run together, upper case, letters and digits. A
user may give either form (``--symbols BTCUSDT`` or ``--symbols BTC/USDT``). The base/quote split of a
native symbol comes from ``GET /api/v3/exchangeInfo`` when K2 runs live
(:func:`k2.sources.binance.exchange_info.load_exchange_info`, cached), or from the offline rule
(:func:`k2.sources.symbols.split_symbol_offline`: the longest known quote asset it ends with).
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from k2.errors import ConfigError
from k2.sources.symbols import Instrument, SymbolInfo, split_symbol_offline


class _ExchangeInfoSymbol(msgspec.Struct):
    symbol: str
    baseAsset: str
    quoteAsset: str


class _ExchangeInfo(msgspec.Struct):
    symbols: list[_ExchangeInfoSymbol]


def parse_exchange_info(payload: bytes) -> dict[str, SymbolInfo]:
    """Symbols -> base/quote assets from a ``GET /api/v3/exchangeInfo`` response body."""
    info = msgspec.json.decode(payload, type=_ExchangeInfo)
    return {s.symbol: SymbolInfo(s.symbol, s.baseAsset, s.quoteAsset) for s in info.symbols}


class BinanceSymbols:
    """Binance's symbol rules (:class:`k2.sources.venue.SymbolRules`)."""

    def __init__(self, metadata: Mapping[str, SymbolInfo] | None = None) -> None:
        self._info: dict[str, SymbolInfo] = dict(metadata or {})

    def native(self, text: str) -> str:
        candidate = text.strip().upper()
        canonical = Instrument.parse(candidate)
        if canonical is not None:
            candidate = canonical.base + canonical.quote
        if not candidate.isascii() or not candidate.isalnum():
            raise ConfigError(f"invalid Binance symbol {text!r}: letters and digits (BTCUSDT) or BASE/QUOTE (BTC/USDT)")
        return candidate

    def instrument(self, symbol: str) -> Instrument:
        info = self._info.get(symbol)
        if info is None:
            info = self._info[symbol] = split_symbol_offline(symbol)
        return Instrument(info.base, info.quote)
