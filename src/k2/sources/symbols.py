"""Base/quote assets of exchange symbols: from the venue's metadata when live, or an offline rule.

Offline fallback (documented in docs/sources.md): the symbol is split at the longest known quote
asset it ends with (``BTCUSDT`` -> ``BTC``/``USDT``, ``ETHFDUSD`` -> ``ETH``/``FDUSD``). A symbol
that ends with none of them keeps the whole symbol as base and ``UNKNOWN`` as quote, so the trade is
still stored, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

UNKNOWN_ASSET = "UNKNOWN"

# Quote assets seen on Binance spot, longest first so that e.g. FDUSD wins over USD-like suffixes.
KNOWN_QUOTES: tuple[str, ...] = tuple(
    sorted(
        """USDT USDC FDUSD TUSD BUSD USDP USDS DAI AEUR EURI EUR GBP TRY BRL JPY AUD UAH RUB ZAR IDR BIDR ARS
        PLN RON MXN COP CZK NGN BTC ETH BNB XRP TRX DOGE DOT SOL PAX VAI USD""".split(),
        key=len,
        reverse=True,
    )
)


@dataclass(frozen=True, slots=True)
class SymbolInfo:
    symbol: str
    base: str
    quote: str


@dataclass(frozen=True, slots=True)
class Instrument:
    """A canonical instrument: base and quote assets, written ``BASE/QUOTE`` (``BTC/USDT``) across venues."""

    base: str
    quote: str

    @property
    def name(self) -> str:
        return f"{self.base}/{self.quote}"

    @classmethod
    def parse(cls, text: str) -> Instrument | None:
        """``BTC/USDT`` -> Instrument("BTC", "USDT"); None when ``text`` is not in the canonical form."""
        base, sep, quote = text.strip().upper().partition("/")
        if not sep or not base.isalnum() or not quote.isalnum():
            return None
        return cls(base, quote)


def split_symbol_offline(symbol: str) -> SymbolInfo:
    """Split a concatenated symbol using :data:`KNOWN_QUOTES` (the offline fallback)."""
    upper = symbol.upper()
    for quote in KNOWN_QUOTES:
        if upper.endswith(quote) and len(upper) > len(quote):
            return SymbolInfo(upper, upper[: -len(quote)], quote)
    return SymbolInfo(upper, upper, UNKNOWN_ASSET)
