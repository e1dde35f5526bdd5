"""Schema evolution of K2's tables (trade v2 -> v3, the canonical ``instrument``): a table created today and
one created at v2 and upgraded on start end with identical field ids; the upgrade keeps every old row
readable; the files written afterwards carry the new column's id. Real SQLite catalog, real files."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import index_by_id
from pyiceberg.table import Table

from k2.config import LakeSettings
from k2.errors import LakeError
from k2.lake.catalog import (
    TABLE_PROPERTIES,
    evolve_table,
    load_or_create_table,
    partition_spec,
    sort_order,
    table_identifier,
)
from k2.lake.writer import TableWriter
from k2.query import QueryEngine
from k2.schema import TRADE, TRADE_V2, to_arrow, to_iceberg
from k2.schema.kinds import RecordKind, spec

OLD_ROWS = 20_000


def _as_v2(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """Rows as a K2 before trade v3 wrote them (no instrument column)."""
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    return table.select(list(TRADE_V2.names)).cast(to_arrow(TRADE_V2))


def _v2_table(
    catalog: Catalog, lake: LakeSettings, rows: pa.Table | None = None, partition: PartitionSpec | None = None
) -> Table:
    """The trades table exactly as K2 created it at trade v2 (and wrote ``rows`` to it)."""
    table = catalog.create_table(
        table_identifier(lake, RecordKind.TRADES),
        schema=to_iceberg(TRADE_V2),
        partition_spec=partition or partition_spec(RecordKind.TRADES),
        sort_order=sort_order(RecordKind.TRADES),
        properties={**TABLE_PROPERTIES, "k2.record": "Trade", "k2.schema-version": "2"},
    )
    if rows is not None:
        TableWriter(catalog, table_identifier(lake, RecordKind.TRADES), lake).append(rows)
    return table


def _all_ids(table: Table) -> dict[int, str]:
    return {i: f.name for i, f in index_by_id(table.schema()).items()}


def _renamed(lake: LakeSettings, name: str) -> LakeSettings:
    return lake.model_copy(update={"trades_table": name})


def test_a_new_table_and_an_upgraded_v2_table_have_identical_field_ids(catalog: Catalog, lake: LakeSettings) -> None:
    fresh = load_or_create_table(catalog, lake, RecordKind.TRADES)
    old_lake = _renamed(lake, "trades_v2")
    _v2_table(catalog, old_lake)
    upgraded = load_or_create_table(catalog, old_lake, RecordKind.TRADES)

    assert fresh.schema() == upgraded.schema() == to_iceberg(TRADE)
    assert _all_ids(fresh) == _all_ids(upgraded)  # nested ids (list element, map key/value) too
    assert upgraded.schema().find_field("instrument").field_id == 20 == TRADE.field("instrument").id
    assert fresh.properties["k2.schema-version"] == upgraded.properties["k2.schema-version"] == "3"
    # Both took the same steps: the v2 schema, then v3 (a new table in one commit, one metadata file).
    assert [len(t.metadata.schemas) for t in (fresh, upgraded)] == [2, 2]
    assert len(fresh.metadata.metadata_log) == 0
    assert load_or_create_table(catalog, old_lake, RecordKind.TRADES).schema() == upgraded.schema()  # idempotent


def test_every_kinds_new_table_equals_its_first_version_upgraded(catalog: Catalog, lake: LakeSettings) -> None:
    """Quotes: created at v1 and relaxed (v2's optional sizes) in the same commit, like an old v1 table
    opened by a writer; both end with the declared schema, docs included."""
    for kind in RecordKind:
        s = spec(kind)
        fresh = load_or_create_table(catalog, lake, kind)
        field = {RecordKind.QUALITY_EVENTS: "events_table"}.get(kind, f"{kind.value}_table")
        old_lake = lake.model_copy(update={field: f"{kind.value}_old"})
        first = s.history[0]
        catalog.create_table(
            table_identifier(old_lake, kind), schema=to_iceberg(first), partition_spec=partition_spec(kind),
            sort_order=sort_order(kind), properties={**TABLE_PROPERTIES, "k2.schema-version": str(first.version)},
        )  # fmt: skip
        upgraded = load_or_create_table(catalog, old_lake, kind)
        assert fresh.schema() == upgraded.schema() == to_iceberg(s.record), kind
        assert (
            fresh.properties["k2.schema-version"] == upgraded.properties["k2.schema-version"] == str(s.record.version)
        )
        assert len(fresh.metadata.schemas) == len(upgraded.metadata.schemas) == (1 if len(s.history) == 1 else 2)
    quotes = load_or_create_table(catalog, lake, RecordKind.QUOTES).schema()
    assert not quotes.find_field("bid_size").required and quotes.find_field("bid_price").required


def test_a_reader_leaves_an_old_table_as_it_is(catalog: Catalog, lake: LakeSettings) -> None:
    old_lake = _renamed(lake, "read_only")
    _v2_table(catalog, old_lake)
    assert load_or_create_table(catalog, old_lake, RecordKind.TRADES, evolve=False).schema() == to_iceberg(TRADE_V2)


def test_two_writers_upgrading_at_once_both_end_on_the_same_schema(catalog: Catalog, lake: LakeSettings) -> None:
    """Both processes loaded the v2 table before either evolved it (the race, forced): the second one's
    commit fails against the first's, it reloads, finds the column there and adds nothing."""
    old_lake = _renamed(lake, "raced")
    _v2_table(catalog, old_lake)
    identifier = table_identifier(old_lake, RecordKind.TRADES)
    first, second = catalog.load_table(identifier), catalog.load_table(identifier)
    evolve_table(first, RecordKind.TRADES)
    assert evolve_table(second, RecordKind.TRADES).schema() == to_iceberg(TRADE)
    final = catalog.load_table(identifier)
    assert final.schema() == to_iceberg(TRADE) and len(final.metadata.schemas) == 2


def test_a_table_whose_ids_differ_from_the_declaration_is_refused(catalog: Catalog, lake: LakeSettings) -> None:
    """Created from the v3 schema directly, Iceberg gives ``instrument`` id 17: files stamped with the
    declared id 20 would not resolve. K2 refuses to write to it rather than mislabel columns."""
    odd = _renamed(lake, "odd")
    catalog.create_table(table_identifier(odd, RecordKind.TRADES), schema=to_iceberg(TRADE))
    assert catalog.load_table(table_identifier(odd, RecordKind.TRADES)).schema().find_field("instrument").field_id == 17
    with pytest.raises(LakeError, match=r"has field ids .* K2 declares"):
        load_or_create_table(catalog, odd, RecordKind.TRADES)


def test_old_rows_stay_readable_and_new_files_carry_the_instruments_id(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    old_lake = _renamed(lake, "upgraded")
    _v2_table(catalog, old_lake, _as_v2(trades.slice(0, OLD_ROWS)))
    table = load_or_create_table(catalog, old_lake, RecordKind.TRADES)  # a writer starting on it
    identifier = table_identifier(old_lake, RecordKind.TRADES)
    TableWriter(catalog, identifier, old_lake).append(trades.slice(OLD_ROWS))
    table = catalog.load_table(identifier)

    # pyiceberg reads by field id: old rows have no instrument, new ones theirs.
    got = table.scan().to_arrow().sort_by("platform_sequence")
    assert got.num_rows == trades.num_rows
    instruments = got.column("instrument").to_pylist()
    assert instruments[:OLD_ROWS] == [None] * OLD_ROWS
    assert instruments[OLD_ROWS:] == trades.column("instrument").to_pylist()[OLD_ROWS:]

    files = [task.file.file_path.removeprefix("file://") for task in table.scan().plan_files()]
    ids = [{f.name: f.metadata[b"PARQUET:field_id"] for f in pq.read_schema(path)} for path in files]
    assert sorted("instrument" in f for f in ids) == [False] * 2 + [True] * (len(files) - 2)  # two days of v2 rows
    assert {f["instrument"] for f in ids if "instrument" in f} == {b"20"}

    # DuckDB reads old and new files together by field id, in any order.
    with QueryEngine(catalog, old_lake, refresh_interval_s=None) as engine:
        counts = engine.sql("SELECT count(*) FILTER (WHERE instrument IS NULL) AS old, count(*) AS n FROM trades")
        assert counts.to_pylist() == [{"old": OLD_ROWS, "n": trades.num_rows}]
        btc = engine.query_trades(instrument="BTC/USDT", limit=1_000_000).table
        want = pa.Table.from_batches([trades]).filter(pc.equal(trades.column("symbol"), "BTCUSDT"))
        assert btc.num_rows == want.num_rows  # old rows found by their venue symbol
        assert set(btc.column("instrument").to_pylist()) == {"BTC/USDT"}  # and given their instrument
        assert sorted(btc.column("message_id").to_pylist()) == sorted(want.column("message_id").to_pylist())
