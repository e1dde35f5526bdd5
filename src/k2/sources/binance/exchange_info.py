"""Binance exchangeInfo (base/quote assets per symbol), fetched over verified TLS and cached on disk.

This is the I/O edge around the pure :func:`k2.sources.binance.symbols.parse_exchange_info`. When the
exchange cannot be reached and no cache exists, callers fall back to
:func:`k2.sources.symbols.split_symbol_offline` (see docs/sources.md).
"""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import certifi
import msgspec

from k2.config import K2Settings
from k2.errors import SourceError
from k2.logging import get_logger
from k2.sources.binance.symbols import parse_exchange_info
from k2.sources.symbols import SymbolInfo

log = get_logger(__name__)


def verified_ssl_context() -> ssl.SSLContext:
    """A client TLS context that verifies certificates and host names against certifi's CA bundle."""
    return ssl.create_default_context(cafile=certifi.where())


def load_exchange_info(rest_url: str, cache: Path, ttl_s: float, timeout_s: float = 10.0) -> dict[str, SymbolInfo]:
    """Symbol metadata from the cache when fresh, else from ``GET {rest_url}/api/v3/exchangeInfo``.

    Raises SourceError when neither a fresh fetch nor any cache (even stale) is available.
    """
    if cache.exists() and time.time() - cache.stat().st_mtime < ttl_s:
        return parse_exchange_info(cache.read_bytes())
    url = rest_url.rstrip("/") + "/api/v3/exchangeInfo"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=verified_ssl_context()) as resp:  # noqa: S310 - https URL from settings
            body: bytes = resp.read()
        info = parse_exchange_info(body)
    except (urllib.error.URLError, OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        if cache.exists():
            log.warning("exchange_info.stale_cache", url=url, error=str(exc), cache=str(cache))
            return parse_exchange_info(cache.read_bytes())
        raise SourceError(f"cannot fetch {url}: {exc}") from exc
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(body)
    log.info("exchange_info.fetched", url=url, symbols=len(info))
    return info


def load_symbol_metadata(settings: K2Settings, rest_url: str) -> dict[str, SymbolInfo] | None:
    """The venue's ``metadata`` loader: exchangeInfo (cached) from ``rest_url``; None (the offline rule)
    when it cannot be had."""
    source = settings.source
    try:
        return load_exchange_info(rest_url, source.exchange_info_cache, source.exchange_info_ttl_s)
    except SourceError as exc:
        log.warning("exchange_info.offline_fallback", error=str(exc))
        return None
