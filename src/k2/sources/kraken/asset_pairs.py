"""Kraken AssetPairs (every spelling of every pair), live over verified TLS and cached, or bundled (I/O).

The I/O edge around the pure :func:`k2.sources.kraken.symbols.parse_asset_pairs`. The venue's
``metadata`` loader (:func:`load_symbol_metadata`) fetches ``GET /0/public/AssetPairs`` (cached beside
Binance's exchangeInfo cache, for ``source.exchange_info_ttl_s``); its ``symbol_rules`` factory
(:func:`kraken_rules`) uses what that gave, or, offline, the real AssetPairs answer bundled in
``data/`` (see ``data/README.md`` for its provenance).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from functools import cache
from pathlib import Path

import msgspec

from k2.config import K2Settings
from k2.errors import SourceError
from k2.logging import get_logger
from k2.sources.kraken.rest import ASSET_PAIRS_PATH
from k2.sources.kraken.symbols import KrakenSymbols, parse_asset_pairs
from k2.sources.rest import tls_context
from k2.sources.symbols import SymbolInfo

log = get_logger(__name__)

BUNDLED_ASSET_PAIRS = Path(__file__).parent / "data" / "asset_pairs_2021-04-17.json"
CACHE_NAME = "kraken_asset_pairs.json"


@cache
def bundled_pairs() -> dict[str, SymbolInfo]:
    """The bundled real AssetPairs answer (2021-04-17), parsed once."""
    return parse_asset_pairs(BUNDLED_ASSET_PAIRS.read_bytes())


def kraken_rules(metadata: Mapping[str, SymbolInfo] | None = None) -> KrakenSymbols:
    """The venue's ``symbol_rules`` factory: live AssetPairs when given (strict), else the bundled answer."""
    if metadata is None:
        return KrakenSymbols(bundled_pairs(), strict=False)
    return KrakenSymbols(metadata, strict=True)


def _parse(body: bytes) -> dict[str, SymbolInfo]:
    try:
        return parse_asset_pairs(body)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise SourceError(f"unexpected AssetPairs answer: {exc}") from exc


def load_asset_pairs(rest_url: str, cache_path: Path, ttl_s: float, timeout_s: float = 10.0) -> dict[str, SymbolInfo]:
    """AssetPairs from the cache when fresh, else from ``GET {rest_url}/0/public/AssetPairs`` (a stale cache
    when that fails). Raises SourceError when neither is available."""
    if cache_path.exists() and time.time() - cache_path.stat().st_mtime < ttl_s:
        return _parse(cache_path.read_bytes())
    url = rest_url.rstrip("/") + ASSET_PAIRS_PATH
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=tls_context()) as resp:  # noqa: S310 - URL from settings
            body: bytes = resp.read()
        pairs = _parse(body)
    except (urllib.error.URLError, OSError, SourceError) as exc:
        if cache_path.exists():
            log.warning("asset_pairs.stale_cache", url=url, error=str(exc), cache=str(cache_path))
            return _parse(cache_path.read_bytes())
        raise SourceError(f"cannot fetch {url}: {exc}") from exc
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(body)
    log.info("asset_pairs.fetched", url=url, spellings=len(pairs))
    return pairs


def load_symbol_metadata(settings: K2Settings, rest_url: str) -> dict[str, SymbolInfo] | None:
    """The venue's ``metadata`` loader: AssetPairs (cached) from ``rest_url``; None (the bundled answer)
    when it cannot be had."""
    source = settings.source
    try:
        return load_asset_pairs(rest_url, source.exchange_info_cache.with_name(CACHE_NAME), source.exchange_info_ttl_s)
    except SourceError as exc:
        log.warning("asset_pairs.offline_fallback", error=str(exc))
        return None
