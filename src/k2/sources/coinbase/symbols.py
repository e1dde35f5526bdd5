"""Coinbase symbols: ``BTC-USD`` natively, ``BTC/USD`` canonically. Pure.

Coinbase's product id is the base and quote currency joined by a dash, upper case (``BTC-USD``,
``ETH-EUR``, ``SKL-GBP``), so the instrument is read off the id itself: no metadata needed, no
offline guess. A user may give either form (``--symbols BTC-USD`` or ``--symbols BTC/USD``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from k2.errors import ConfigError
from k2.sources.symbols import Instrument, SymbolInfo

_PRODUCT = re.compile(r"([A-Z0-9]{1,20})[-/]([A-Z0-9]{1,20})", re.ASCII)


class CoinbaseSymbols:
    """Coinbase's symbol rules (:class:`k2.sources.venue.SymbolRules`)."""

    def __init__(self, metadata: Mapping[str, SymbolInfo] | None = None) -> None:
        self._info: dict[str, SymbolInfo] = dict(metadata or {})

    def native(self, text: str) -> str:
        """``BTC-USD`` from ``btc-usd``, ``BTC-USD`` or ``BTC/USD``; ConfigError otherwise."""
        m = _PRODUCT.fullmatch(text.strip().upper())
        if m is None:
            raise ConfigError(
                f"invalid Coinbase product {text!r}: BASE-QUOTE (BTC-USD) or BASE/QUOTE (BTC/USD), letters and digits"
            )
        return f"{m.group(1)}-{m.group(2)}"

    def instrument(self, symbol: str) -> Instrument:
        info = self._info.get(symbol)
        if info is not None:
            return Instrument(info.base, info.quote)
        base, _, quote = symbol.partition("-")
        return Instrument(base, quote)
