"""Fixtures for the query tests: real parsed trades in a real SQLite-catalogued Iceberg table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog

from k2.config import LakeSettings
from k2.lake.catalog import load_or_create_trades_table, open_catalog
from k2.query import QueryEngine
from k2.sources.base import DataType, RawFrame
from k2.sources.binance import BinanceAdapter

# The recording is appended in two commits split here (rows are in time order), so the table has
# two snapshots and two files in the partitions the split crosses (see test_planning.py).
SPLIT = 20_000


@pytest.fixture(scope="session")
def recording(bundled_frames: list[RawFrame]) -> pa.Table:
    """The 34,419 bundled real Binance trades, parsed."""
    parsed = BinanceAdapter().parse(bundled_frames, first_platform_sequence=0, is_sample_data=True)
    return pa.Table.from_batches([parsed.records[DataType.TRADES]])


def fill(catalog: Catalog, lake: LakeSettings, data: pa.Table) -> None:
    table = load_or_create_trades_table(catalog, lake)
    table.append(data.slice(0, SPLIT))
    table.append(data.slice(SPLIT))


@pytest.fixture(scope="module")
def filled_lake(tmp_path_factory: pytest.TempPathFactory, recording: pa.Table) -> tuple[Catalog, LakeSettings]:
    """A warehouse holding the recording (read-only for the tests that share it)."""
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
