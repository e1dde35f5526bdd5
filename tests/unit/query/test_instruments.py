"""Queries by canonical instrument across venues: Binance's real trades and AGGTEST's (the test venue's real
aggregate trades) in one table, part of Binance's written before the instrument column existed.

Every answer is checked against the Python reference over the input rows, per venue; the planner's
pruning by the instrument's column metrics (and by the venue symbols of old rows) is checked on the
planned files.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import AlwaysFalse, And, EqualTo, IsNull, Or

from k2.config import LakeSettings
from k2.emulator.recording import BUNDLED_BINANCE_SESSION, read_recording
from k2.errors import QueryError
from k2.feed.stamp import parse_canonical
from k2.lake.catalog import load_or_create_table, open_catalog, table_identifier
from k2.lake.writer import TableWriter
from k2.query import QueryEngine, ScanFilter
from k2.query.bars import VENUE_OHLCV_SCHEMA
from k2.schema.kinds import RecordKind
from k2.sources import RawFrame
from tests import aggtest
from tests.unit.lake.test_evolution import _as_v2, _v2_table
from tests.unit.query import reference as ref
from tests.unit.query.conftest import day_symbol_spec

OLD = 10_000  # Binance rows written by a K2 before trade v3 (no instrument column)


@pytest.fixture(scope="module")
def agg_trades() -> pa.Table:
    """AGGTEST's 1,910 recorded aggregate trades (BTCUSDT, ETHUSDT, DOTUSDT), stamped by the feed's rule."""
    aggtest.register()
    frames = [RawFrame(f.frame.encode(), f.recv_us) for f in read_recording(aggtest.RECORDING)]
    parsed = parse_canonical("aggtest", frames, symbols=["BTCUSDT", "ETH/USDT", "DOTUSDT"], first_sequence=1)
    return pa.Table.from_batches([parsed.records[RecordKind.TRADES]])


@pytest.fixture(scope="module")
def two_venues(
    tmp_path_factory: pytest.TempPathFactory, recording: pa.Table, agg_trades: pa.Table
) -> tuple[Catalog, LakeSettings, pa.Table]:
    """The table: Binance's first rows as v2 wrote them, then the upgrade, the rest and AGGTEST's. Partitioned
    by day and symbol, so each data file holds one venue symbol (the pruning test reads which)."""
    lake = LakeSettings(warehouse=tmp_path_factory.mktemp("instruments") / "warehouse")
    catalog = open_catalog(lake)
    _v2_table(catalog, lake, _as_v2(recording.slice(0, OLD)), day_symbol_spec())
    load_or_create_table(catalog, lake, RecordKind.TRADES)
    writer = TableWriter(catalog, table_identifier(lake, RecordKind.TRADES), lake)
    writer.append(recording.slice(OLD))
    writer.append(agg_trades)
    return catalog, lake, pa.concat_tables([recording, agg_trades])


@pytest.fixture(scope="module")
def engine(two_venues: tuple[Catalog, LakeSettings, pa.Table]) -> Iterator[QueryEngine]:
    catalog, lake, _ = two_venues
    with QueryEngine(catalog, lake, refresh_interval_s=None) as eng:
        yield eng


def _of(table: pa.Table, symbol: str, exchange: str | None = None) -> pa.Table:
    mask = pc.equal(table.column("symbol"), symbol)
    if exchange is not None:
        mask = pc.and_(mask, pc.equal(table.column("exchange"), exchange))
    return table.filter(mask)


def test_trades_of_an_instrument_come_from_every_venue(
    engine: QueryEngine, two_venues: tuple[Catalog, LakeSettings, pa.Table]
) -> None:
    everything = two_venues[2]
    got = engine.query_trades(instrument="btc/usdt", limit=1_000_000).table
    want = _of(everything, "BTCUSDT")
    assert sorted(got.column("message_id").to_pylist()) == sorted(want.column("message_id").to_pylist())
    assert set(got.column("exchange").to_pylist()) == {"BINANCE", "AGGTEST"}
    assert set(got.column("instrument").to_pylist()) == {"BTC/USDT"}  # old rows too: derived from the symbol
    times = got.column("timestamp").to_pylist()
    assert times == sorted(times)
    dot = engine.query_trades(instrument="DOT/USDT", limit=1_000_000).table
    assert (
        set(dot.column("exchange").to_pylist()) == {"AGGTEST"} and dot.num_rows == _of(everything, "DOTUSDT").num_rows
    )
    one = engine.query_trades(instrument="ETH/USDT", exchange="BINANCE", limit=1_000_000).table
    assert one.num_rows == _of(everything, "ETHUSDT", "BINANCE").num_rows
    with pytest.raises(QueryError, match="BASE/QUOTE"):
        engine.query_trades(instrument="BTCUSDT")


def test_ohlcv_of_an_instrument_is_per_venue_side_by_side(
    engine: QueryEngine, two_venues: tuple[Catalog, LakeSettings, pa.Table]
) -> None:
    everything = two_venues[2]
    bars = engine.ohlcv(instrument="BTC/USDT", interval="1m").table
    assert bars.schema == VENUE_OHLCV_SCHEMA
    keys = [(r["bucket"], r["exchange"]) for r in bars.to_pylist()]
    assert keys == sorted(keys)
    for exchange in ("BINANCE", "AGGTEST"):
        mine = [{k: v for k, v in r.items() if k != "exchange"} for r in bars.to_pylist() if r["exchange"] == exchange]
        expected = ref.ohlcv(ref.rows(_of(everything, "BTCUSDT", exchange)), timedelta(minutes=1))
        assert mine == expected and mine
        assert mine == engine.ohlcv("BTCUSDT", "1m", exchange=exchange).to_pylist()


def test_vwap_of_an_instrument_spans_the_venues(
    engine: QueryEngine, two_venues: tuple[Catalog, LakeSettings, pa.Table]
) -> None:
    everything = two_venues[2]
    assert engine.vwap(instrument="BTC/USDT") == ref.vwap(ref.rows(_of(everything, "BTCUSDT")))
    assert engine.vwap(instrument="BTC/USDT", exchange="AGGTEST") == ref.vwap(
        ref.rows(_of(everything, "BTCUSDT", "AGGTEST"))
    )
    with pytest.raises(QueryError, match="a symbol or an instrument"):
        engine.vwap()


def _planned(engine: QueryEngine, instrument: str) -> set[tuple[str, str, bool]]:
    """(exchange, symbol, has the instrument column) of each file planned for ``instrument``."""
    files = set(engine.plan(instrument=instrument).files)
    out = set()
    for task in engine.table.scan().plan_files():
        path = task.file.file_path.removeprefix("file://")
        if path in files:
            lower = task.file.lower_bounds
            out.add((lower[4].decode(), lower[3].decode(), 20 in lower))
    return out


def test_the_planner_prunes_files_by_the_instruments_metrics(
    engine: QueryEngine, two_venues: tuple[Catalog, LakeSettings, pa.Table]
) -> None:
    """Files written since v3 are pruned by their ``instrument`` bounds; files of older rows (no
    instrument metrics) by the symbol partition of the venue symbol those rows would have."""
    # Binance: 2 symbols x (old rows: 1 day; newer: 2 days); AGGTEST: 3 symbols, 1 day.
    assert len(engine.plan().files) == 2 + 4 + 3
    assert _planned(engine, "DOT/USDT") == {("AGGTEST", "DOTUSDT", True)}
    assert engine.plan(instrument="DOT/USDT").filter.legacy == (
        "AGGTEST:DOTUSDT",
        "BINANCE:DOTUSDT",
        "COINBASE:DOT-USDT",
        "KRAKEN:DOT/USDT",
    )
    assert _planned(engine, "BTC/USDT") == {
        ("BINANCE", "BTCUSDT", False), ("BINANCE", "BTCUSDT", True), ("AGGTEST", "BTCUSDT", True),
    }  # fmt: skip
    assert engine.plan(instrument="SOL/USDT").files == ()


def test_the_iceberg_filter_asks_old_rows_by_their_venue_symbols() -> None:
    flt = ScanFilter(instrument="BTC/USDT", legacy=("BINANCE:BTCUSDT",))
    old = And(EqualTo("exchange", "BINANCE"), EqualTo("symbol", "BTCUSDT"))
    assert flt.row_filter(["instrument"]) == Or(EqualTo("instrument", "BTC/USDT"), And(IsNull("instrument"), old))
    assert flt.row_filter([]) == old  # a table not upgraded yet has only old rows
    assert ScanFilter(instrument="X/Y").row_filter([]) == AlwaysFalse()
    where, params = flt.sql_where()
    assert "list_contains($instrument_legacy" in where
    assert params == {"instrument": "BTC/USDT", "instrument_legacy": ["BINANCE:BTCUSDT"]}


def test_quotes_spreads_and_the_as_of_join_by_instrument(tmp_path: Path) -> None:
    """Quotes always carried their instrument (quote v1); the same ``instrument=`` selects them."""
    frames = [
        RawFrame(f.frame.encode(), f.recv_us) for f in itertools.islice(read_recording(BUNDLED_BINANCE_SESSION), 20_000)
    ]
    parsed = parse_canonical(
        "binance", frames, symbols=["BTCUSDT", "ETHUSDT"], kinds=(RecordKind.TRADES, RecordKind.QUOTES)
    )
    lake = LakeSettings(warehouse=tmp_path / "warehouse")
    catalog = open_catalog(lake)
    for kind, batch in parsed.records.items():
        load_or_create_table(catalog, lake, kind).append(pa.Table.from_batches([batch]))
    quotes = pa.Table.from_batches([parsed.records[RecordKind.QUOTES]])
    with QueryEngine(catalog, lake, refresh_interval_s=None) as engine:
        eth = engine.query_quotes(instrument="ETH/USDT", limit=1_000_000).table
        assert sorted(eth.column("message_id").to_pylist()) == sorted(
            _of(quotes, "ETHUSDT").column("message_id").to_pylist()
        )
        spread = engine.spread(instrument="BTC/USDT").to_pylist()
        assert [(r["exchange"], r["symbol"], r["quotes"]) for r in spread] == [
            ("BINANCE", "BTCUSDT", _of(quotes, "BTCUSDT").num_rows)
        ]
        joined = engine.trades_with_quotes(instrument="BTC/USDT", limit=50).table
        assert joined.num_rows == 50 and set(joined.column("symbol").to_pylist()) == {"BTCUSDT"}
        assert joined.column("quote_sequence").null_count < 50  # the BTCUSDT quotes were found for them
