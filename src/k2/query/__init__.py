"""Queries: DuckDB over the Parquet files pyiceberg plans for each query (see docs/query.md)."""

from k2.query.bars import OHLCV_SCHEMA, parse_interval
from k2.query.engine import QueryEngine
from k2.query.filters import make_filter
from k2.query.planner import CacheInfo, ScanFilter, ScanPlan
from k2.query.result import QueryResult

__all__ = [
    "OHLCV_SCHEMA",
    "CacheInfo",
    "QueryEngine",
    "QueryResult",
    "ScanFilter",
    "ScanPlan",
    "make_filter",
    "parse_interval",
]
