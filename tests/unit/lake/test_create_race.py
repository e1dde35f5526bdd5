"""Two processes creating the same table at once: the one that loses the race loads the winner's table.

The race is forced, not hoped for: the catalog below lets another (real) SQLite catalog connection create
the table between the loser's staging of its create transaction and its commit."""

from __future__ import annotations

from typing import Any

from pyiceberg.catalog import Catalog

from k2.config import LakeSettings
from k2.lake.catalog import load_or_create_table, open_catalog, table_identifier
from k2.schema.kinds import RecordKind


class _CreatedMeanwhile:
    """A real catalog whose create transaction is overtaken by another catalog's create of the same table."""

    def __init__(self, catalog: Catalog, other: Catalog, lake: LakeSettings) -> None:
        self._catalog, self._other, self._lake = catalog, other, lake

    def __getattr__(self, name: str) -> Any:
        return getattr(self._catalog, name)

    def create_table_transaction(self, *args: Any, **kwargs: Any) -> Any:
        staged = self._catalog.create_table_transaction(*args, **kwargs)
        load_or_create_table(self._other, self._lake, RecordKind.TRADES)  # the other process wins
        return staged


def test_the_process_that_loses_the_create_race_loads_the_table(tmp_path: Any) -> None:
    lake = LakeSettings(warehouse=tmp_path / "warehouse")
    winner = open_catalog(lake)
    loser: Any = _CreatedMeanwhile(open_catalog(lake), winner, lake)
    table = load_or_create_table(loser, lake, RecordKind.TRADES)
    assert table.name() == table_identifier(lake, RecordKind.TRADES)
    assert table.metadata.table_uuid == winner.load_table(table_identifier(lake, RecordKind.TRADES)).metadata.table_uuid
