"""Fixtures for the lake tests: a real SQLite catalog in tmp_path and real parsed trades."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog

from k2.config import K2Settings, LakeSettings
from k2.feed.stamp import parse_canonical
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.schema.kinds import RecordKind
from k2.sources.base import RawFrame


@pytest.fixture(scope="session")
def trades(bundled_frames: list[RawFrame]) -> pa.RecordBatch:
    """The 34,419 bundled real trades as one canonical batch."""
    parsed = parse_canonical(
        "binance", bundled_frames, symbols=["BTCUSDT", "ETHUSDT"], first_sequence=1, is_sample_data=True
    )
    return parsed.records[RecordKind.TRADES]


@pytest.fixture
def lake(settings: K2Settings) -> LakeSettings:
    return settings.lake


@pytest.fixture
def catalog(lake: LakeSettings) -> Catalog:
    catalog = open_catalog(lake)
    load_or_create_table(catalog, lake, RecordKind.TRADES)
    return catalog
