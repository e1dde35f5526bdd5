"""Fixtures for the query tests: real parsed trades in a real SQLite-catalogued Iceberg table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.transforms import DayTransform, IdentityTransform

from k2.config import LakeSettings
from k2.feed.stamp import parse_canonical
from k2.lake.catalog import create_table as create_kind_table
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.query import QueryEngine
from k2.schema import TRADE, to_iceberg
from k2.schema.kinds import RecordKind
from k2.sources.base import RawFrame

# The recording is appended in two commits split here (rows are in time order), so the table has
# two snapshots and two files in the partitions the split crosses (see test_planning.py).
SPLIT = 20_000


@pytest.fixture(scope="session")
def recording(bundled_frames: list[RawFrame]) -> pa.Table:
    """The 34,419 bundled real Binance trades, parsed."""
    parsed = parse_canonical(
        "binance", bundled_frames, symbols=["BTCUSDT", "ETHUSDT"], first_sequence=0, is_sample_data=True
    )
    return pa.Table.from_batches([parsed.records[RecordKind.TRADES]])


def fill(catalog: Catalog, lake: LakeSettings, data: pa.Table) -> None:
    table = load_or_create_table(catalog, lake, RecordKind.TRADES)
    table.append(data.slice(0, SPLIT))
    table.append(data.slice(SPLIT))


def day_symbol_spec() -> PartitionSpec:
    """day(timestamp) + identity(symbol): a fixed layout for the tests that assert which files are planned
    (the production spec is the lake's choice; the engine must not depend on it)."""
    schema = to_iceberg(TRADE)
    return PartitionSpec(
        PartitionField(schema.find_field("timestamp").field_id, 1000, DayTransform(), "timestamp_day"),
        PartitionField(schema.find_field("symbol").field_id, 1001, IdentityTransform(), "symbol"),
    )


def create_table(catalog: Catalog, lake: LakeSettings, spec: PartitionSpec) -> None:
    create_kind_table(catalog, (lake.namespace, lake.trades_table), RecordKind.TRADES, partition=spec)


@pytest.fixture(scope="module")
def day_symbol_lake(tmp_path_factory: pytest.TempPathFactory, recording: pa.Table) -> tuple[Catalog, LakeSettings]:
    """The recording in a table partitioned by day and symbol (read-only for the tests sharing it)."""
    lake = LakeSettings(warehouse=tmp_path_factory.mktemp("query-day-symbol") / "warehouse")
    catalog = open_catalog(lake)
    create_table(catalog, lake, day_symbol_spec())
    fill(catalog, lake, recording)
    return catalog, lake


@pytest.fixture(scope="module")
def day_symbol_engine(day_symbol_lake: tuple[Catalog, LakeSettings]) -> Iterator[QueryEngine]:
    catalog, lake = day_symbol_lake
    with QueryEngine(catalog, lake, refresh_interval_s=None) as eng:
        yield eng


@pytest.fixture(scope="module")
def filled_lake(tmp_path_factory: pytest.TempPathFactory, recording: pa.Table) -> tuple[Catalog, LakeSettings]:
    """The recording in a table created as production creates it (read-only for the tests sharing it)."""
    lake = LakeSettings(warehouse=tmp_path_factory.mktemp("query") / "warehouse")
    catalog = open_catalog(lake)
    fill(catalog, lake, recording)
    return catalog, lake


@pytest.fixture(scope="module")
def engine(filled_lake: tuple[Catalog, LakeSettings]) -> Iterator[QueryEngine]:
    catalog, lake = filled_lake
    with QueryEngine(catalog, lake, refresh_interval_s=None) as eng:
        yield eng


@pytest.fixture
def empty_lake(tmp_path: Path) -> tuple[Catalog, LakeSettings]:
    lake = LakeSettings(warehouse=tmp_path / "warehouse")
    return open_catalog(lake), lake


@pytest.fixture(params=["production-spec", "day+symbol-spec"])
def any_engine(request: pytest.FixtureRequest) -> QueryEngine:
    """The engine on each table layout: answers must not depend on it."""
    name = "engine" if request.param == "production-spec" else "day_symbol_engine"
    eng: QueryEngine = request.getfixturevalue(name)
    return eng
