"""The per-snapshot aggregate cache: same snapshot and filter answer from memory, a new snapshot
recomputes, and the cache stays within its byte bound."""

from __future__ import annotations

import pyarrow as pa
from pyiceberg.catalog import Catalog

from k2.config import LakeSettings
from k2.metrics import REGISTRY
from k2.query import QueryEngine
from k2.query.cache import ResultCache
from tests.unit.query.conftest import SPLIT


def _hits(outcome: str) -> float:
    return REGISTRY.get_sample_value("k2_query_result_cache_total", {"outcome": outcome}) or 0.0


def test_lru_stays_within_its_bytes() -> None:
    one = pa.table({"x": pa.array(range(1000), pa.int64())})  # 8,000 bytes
    cache = ResultCache(max_bytes=2 * one.nbytes)
    cache.put("a", one)
    cache.put("b", one)
    assert cache.get("a") is one  # a is now the most recently used
    cache.put("c", one)
    assert cache.get("b") is None  # b was the least recently used
    assert cache.get("a") is one and cache.get("c") is one
    assert cache.bytes <= cache.max_bytes and len(cache) == 2
    cache.put("huge", pa.concat_tables([one, one, one]))  # larger than the whole cache: not kept
    assert cache.get("huge") is None and len(cache) == 2


def test_a_disabled_cache_keeps_nothing() -> None:
    cache = ResultCache(max_bytes=0)
    cache.put("a", pa.table({"x": [1]}))
    assert cache.get("a") is None and len(cache) == 0


def test_engines_share_aggregates_per_snapshot_and_recompute_on_a_new_one(
    empty_lake: tuple[Catalog, LakeSettings], recording: pa.Table
) -> None:
    catalog, lake = empty_lake
    cache = ResultCache(max_bytes=16 * 1024 * 1024)
    with (
        QueryEngine(catalog, lake, refresh_interval_s=None, results=cache) as first,
        QueryEngine(catalog, lake, refresh_interval_s=None, results=cache) as second,
        QueryEngine(catalog, lake, refresh_interval_s=None) as uncached,
    ):
        first.table.append(recording.slice(0, SPLIT))
        for engine in (first, second, uncached):
            engine.refresh()
        hits, misses = _hits("hit"), _hits("miss")
        bars = first.ohlcv("BTCUSDT", "1m")
        assert (_hits("hit") - hits, _hits("miss") - misses) == (0, 1)
        again = second.ohlcv("BTCUSDT", "1m")  # another engine, same snapshot: from the cache
        assert (_hits("hit") - hits, _hits("miss") - misses) == (1, 1)
        assert again.table.equals(bars.table)
        assert second.vwap("BTCUSDT") == uncached.vwap("BTCUSDT")  # a different aggregate: computed

        first.table.append(recording.slice(SPLIT))  # a new snapshot: new keys, never a stale answer
        for engine in (first, second, uncached):
            engine.refresh()
        after = second.ohlcv("BTCUSDT", "1m")
        assert after.table.equals(uncached.ohlcv("BTCUSDT", "1m").table)
        assert not after.table.equals(bars.table)
        assert second.vwap("BTCUSDT") == uncached.vwap("BTCUSDT")
