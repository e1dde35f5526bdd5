"""Shared fixtures and the bounded ``eventually`` helper (never bare sleeps)."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from k2.config import K2Settings, LakeSettings, SourceSettings
from k2.emulator.recording import BUNDLED_BINANCE_TRADES, read_recording
from k2.feed.stamp import stamp
from k2.schema.kinds import RecordKind
from k2.sources.base import RawFrame
from k2.sources.binance.parser import BinanceParser
from k2.sources.binance.rest import parse_historical_trades
from k2.sources.binance.symbols import BinanceSymbols
from k2.sources.symbols import SymbolInfo
from k2.sources.venue import FetchedTrades

# Real services (kafka, kafka3, schema_registry, s3, postgres): see tests/integration/services/conftest.py.
pytest_plugins = ("tests.integration.services.fixtures",)

T = TypeVar("T")

FIXTURES = Path(__file__).parent / "fixtures"


def eventually(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Call ``check`` until it returns a truthy value or stops raising AssertionError; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


async def eventually_async(check: Callable[[], Awaitable[T]], timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = await check()
            if result:
                return result
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


@pytest.fixture(autouse=True)
def _unfrozen_heap() -> Iterator[None]:
    """A CLI command run in the test process freezes its heap (``freeze_start_up``): unfreeze it
    after each test, so what one test allocated stays collectable in the next."""
    yield
    gc.unfreeze()


@pytest.fixture(scope="session")
def bundled_frames() -> list[RawFrame]:
    """The bundled real recording (34,419 Binance trades) as raw frames."""
    return [RawFrame(f.frame.encode(), f.recv_us) for f in read_recording(BUNDLED_BINANCE_TRADES)]


@pytest.fixture
def settings(tmp_path: Path) -> K2Settings:
    """Settings for a test: warehouse in tmp_path, nothing read from the environment's files."""
    return K2Settings(
        source=SourceSettings(symbols=("BTCUSDT", "ETHUSDT"), exchange_info_cache=tmp_path / "xinfo.json"),
        lake=LakeSettings(warehouse=tmp_path / "warehouse", flush_rows=5_000, flush_seconds=0.2),
    )


def rest_trades(
    payload: bytes, symbol: str, *, received_at_us: int, first: int = 1, sample: bool = True, **kwargs: Any
) -> FetchedTrades:
    """Binance's REST page parser, its rows stamped like a feed stamps them (platform sequence from
    ``first``, ``is_sample_data`` = ``sample``)."""
    instrument = BinanceSymbols().instrument(symbol)
    got = parse_historical_trades(payload, symbol, received_at_us=received_at_us, instrument=instrument, **kwargs)
    batch = None if got.batch is None else stamp(RecordKind.TRADES, got.batch, first, sample, {symbol: instrument.name})
    return FetchedTrades(batch, got.ids, got.parsed)


def binance_parser(
    symbols: Sequence[str] = ("BTCUSDT", "ETHUSDT"),
    kinds: Sequence[RecordKind] = (RecordKind.TRADES,),
    *,
    symbol_info: Mapping[str, SymbolInfo] | None = None,
    **kwargs: Any,
) -> BinanceParser:
    """Binance's parser for ``symbols`` x ``kinds`` (offline symbol rules unless ``symbol_info``)."""
    return BinanceParser(symbols, kinds, rules=BinanceSymbols(symbol_info), **kwargs)
