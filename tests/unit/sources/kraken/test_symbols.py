"""Kraken symbols: every spelling maps to the v2 form through AssetPairs (bundled or live), X/Z never stripped."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import msgspec
import pytest

from k2.config import K2Settings, SourceSettings
from k2.emulator.kraken import BUNDLED_KRAKEN, KrakenProtocol
from k2.emulator.server import BinanceEmulator, ReplayConfig
from k2.errors import ConfigError, SourceError
from k2.sources import load_venue
from k2.sources.kraken.asset_pairs import (
    BUNDLED_ASSET_PAIRS,
    CACHE_NAME,
    bundled_pairs,
    kraken_rules,
    load_asset_pairs,
    load_symbol_metadata,
)
from k2.sources.kraken.symbols import KrakenSymbols, parse_asset_pairs, v2_symbol
from k2.sources.symbols import Instrument, SymbolInfo
from tests.unit.sources.kraken.recorded import KRAKEN

BTC_USD = SymbolInfo("BTC/USD", "BTC", "USD")


@pytest.mark.parametrize(
    ("text", "symbol"),
    [
        ("BTC/USD", "BTC/USD"),  # v2 (canonical)
        ("XBT/USD", "BTC/USD"),  # wsname (v1)
        ("XBTUSD", "BTC/USD"),  # altname
        ("XXBTZUSD", "BTC/USD"),  # pair key
        (" btc/usd ", "BTC/USD"),
        ("xbtusdt", "BTC/USDT"),
        ("XBT/USDT", "BTC/USDT"),
        ("ETHUSD", "ETH/USD"),
        ("XETHZUSD", "ETH/USD"),
        # Real codes that start with X or Z: a blind prefix strip would break each of these.
        ("XXRPZUSD", "XRP/USD"),
        ("XRPUSD", "XRP/USD"),
        ("XXLMZUSD", "XLM/USD"),
        ("XXMRZUSD", "XMR/USD"),
        ("XZECZUSD", "ZEC/USD"),
        ("ZECUSD", "ZEC/USD"),
        ("XTZUSD", "XTZ/USD"),
        ("XDGUSD", "DOGE/USD"),  # Kraken's legacy XDG is DOGE in v2
        ("XDG/USD", "DOGE/USD"),
        ("USDTZUSD", "USDT/USD"),
        ("NEW/USD", "NEW/USD"),  # offline: a pair listed after 2021 is still accepted in BASE/QUOTE form
    ],
)
def test_every_spelling_maps_to_the_v2_symbol(text: str, symbol: str) -> None:
    assert kraken_rules().native(text) == symbol


@pytest.mark.parametrize(
    "text", ["BTCUSD", "XBT", "", "BTC/", "/USD", "BTC//USD", "BTC USD/EUR", "BTC/US$", "XBTUSD.d"]
)
def test_what_is_no_kraken_pair(text: str) -> None:
    with pytest.raises(ConfigError):
        kraken_rules().native(text)


def test_the_instrument_is_the_v2_symbol() -> None:
    rules = kraken_rules()
    assert rules.instrument("BTC/USD") == Instrument("BTC", "USD")
    assert rules.instrument("BTC/USDT").name == "BTC/USDT"
    assert rules.instrument("DOGE/USD") == Instrument("DOGE", "USD")
    assert rules.instrument("ETH2.S/ETH") == Instrument("ETH2.S", "ETH")


def test_rest_pair_names() -> None:
    rules = kraken_rules()
    assert rules.rest_pair("BTC/USD") == "XBTUSD"  # altname, shorter than the key XXBTZUSD
    assert rules.rest_pair("BTC/USDT") == "XBTUSDT"
    assert rules.rest_pair("DOGE/USD") == "XDGUSD"
    assert rules.rest_pair("XRP/USD") == "XRPUSD"
    assert rules.rest_pair("NEW/USD") == "NEWUSD"  # not listed: the assets run together, legacy codes


def test_the_bundled_asset_pairs_are_the_real_2021_answer() -> None:
    pairs = bundled_pairs()
    assert len({info.symbol for info in pairs.values()}) == 293  # 304 pairs, 11 dark-pool ones without wsname
    assert pairs["XXBTZUSD"] == pairs["XBTUSD"] == pairs["XBT/USD"] == pairs["BTC/USD"] == BTC_USD
    assert "XBTUSD.D" not in pairs  # dark pool: no WebSocket market
    digest = hashlib.sha256(BUNDLED_ASSET_PAIRS.read_bytes()).hexdigest()
    assert digest == "40bd7fe89b58d19987e07a6fecabbe1a777686fe4d3920c0a8c0c878c60faed2"  # data/README.md


def test_the_2025_asset_pairs_answer_parses() -> None:
    pairs = parse_asset_pairs((KRAKEN / "rest_assetpairs_XBTUSDT_2025-11.json").read_bytes())
    assert pairs == dict.fromkeys(["XBTUSDT", "XBT/USDT", "BTC/USDT"], SymbolInfo("BTC/USDT", "BTC", "USDT"))
    assert v2_symbol("XBT/USDT") == "BTC/USDT"


def test_an_error_answer_is_refused() -> None:
    with pytest.raises(ValueError, match="EGeneral:Internal error"):
        parse_asset_pairs(b'{"error":["EGeneral:Internal error"]}')
    with pytest.raises(msgspec.ValidationError):
        parse_asset_pairs(b'{"result":{}}')


def test_live_metadata_is_strict() -> None:
    rules = KrakenSymbols({"XBTUSD": BTC_USD, "BTC/USD": BTC_USD}, strict=True)
    assert rules.native("xbtusd") == "BTC/USD"
    with pytest.raises(ConfigError, match="lists no pair 'ETH/USD'"):
        rules.native("ETH/USD")
    assert kraken_rules({"BTC/USD": BTC_USD}).strict and not kraken_rules().strict


def test_asset_pairs_are_fetched_cached_and_fall_back(tmp_path: Path) -> None:
    """Against the emulator's REST side over a real socket: fetched once, then served from the cache, a
    stale cache used when the venue is gone, the bundled rule (None) when there is neither."""
    cache = tmp_path / CACHE_NAME

    async def main() -> None:
        async with BinanceEmulator(ReplayConfig(recording=BUNDLED_KRAKEN, protocol=KrakenProtocol())) as emu:
            url = emu.http_url
            assert emu.rest is not None
            fetched = await asyncio.to_thread(load_asset_pairs, url, cache, 3600.0)
            assert fetched == bundled_pairs() and cache.read_bytes() == BUNDLED_ASSET_PAIRS.read_bytes()
            await asyncio.to_thread(load_asset_pairs, url, cache, 3600.0)
            assert [r.path for r in emu.rest.requests] == ["/0/public/AssetPairs"]  # the second from the cache
        os.utime(cache, (1, 1))  # stale, and the venue is gone: the stale cache still serves
        assert load_asset_pairs(url, cache, 3600.0)["XBTUSD"] == BTC_USD
        cache.unlink()
        with pytest.raises(SourceError, match="cannot fetch"):
            load_asset_pairs(url, cache, 3600.0)
        settings = K2Settings(source=SourceSettings(venue="kraken", exchange_info_cache=tmp_path / "xinfo.json"))
        assert load_symbol_metadata(settings, url) is None

    asyncio.run(main())


def test_the_venue_entry() -> None:
    venue = load_venue("KRAKEN")
    assert (venue.name, venue.exchange, venue.asset_class) == ("kraken", "KRAKEN", "crypto")
    assert (venue.ws_url, venue.rest_url) == ("wss://ws.kraken.com", "https://api.kraken.com")
    assert dict(venue.streams) == {"trades": "trade", "quotes": "ticker"}
    assert venue.rules().native("XBTUSD") == "BTC/USD"
    assert venue.load("emulator").__name__ == "KrakenProtocol"
    assert venue.load("backfill").__name__ == "KrakenTradeFetcher"
    assert venue.load("metadata") is load_symbol_metadata
