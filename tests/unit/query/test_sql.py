"""Read-only SQL over the `trades` view: what runs, and real attempts at everything that must not."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog

from k2.config import LakeSettings
from k2.errors import QueryError, ReadOnlyViolation
from k2.query import QueryEngine
from tests.unit.query import reference as ref


def test_vendor_data_is_readable(engine: QueryEngine, recording: pa.Table) -> None:
    result = engine.sql(
        "SELECT vendor_data['is_buyer_maker'] AS buyer_maker, side, count(*) AS n FROM trades GROUP BY ALL ORDER BY ALL"
    )
    rows = ref.rows(recording)
    makers = sum(1 for r in rows if dict(r["vendor_data"])["is_buyer_maker"] == "true")
    assert result.to_pylist() == [
        {"buyer_maker": "false", "side": "BUY", "n": len(rows) - makers},
        {"buyer_maker": "true", "side": "SELL", "n": makers},
    ]


def test_positional_and_named_parameters(engine: QueryEngine, recording: pa.Table) -> None:
    btc = len(ref.rows(recording, "BTCUSDT"))
    assert engine.sql("SELECT count(*) AS n FROM trades WHERE symbol = ?", ["BTCUSDT"]).to_pylist() == [{"n": btc}]
    named = engine.sql("SELECT count(*) AS n FROM trades WHERE symbol = $s", {"s": "BTCUSDT"})
    assert named.to_pylist() == [{"n": btc}]
    # A value that looks like SQL is only ever a value.
    assert engine.sql("SELECT count(*) AS n FROM trades WHERE symbol = ?", ["x' OR 1=1 --"]).to_pylist() == [{"n": 0}]


def test_with_values_describe_and_decimal_types(engine: QueryEngine) -> None:
    result = engine.sql("WITH t AS (SELECT max(price) AS p FROM trades WHERE symbol = 'ETHUSDT') SELECT p FROM t")
    assert result.table.schema.field("p").type == pa.decimal128(38, 12)
    assert engine.sql("VALUES (1), (2)").num_rows == 2
    columns = engine.sql("DESCRIBE trades").table.column("column_name").to_pylist()
    assert columns[:3] == ["message_id", "trade_id", "symbol"]


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE x AS SELECT * FROM trades",
        "CREATE TEMP TABLE x AS SELECT 1",
        "CREATE VIEW trades2 AS SELECT 1",
        "CREATE MACRO m(a) AS a",
        "INSERT INTO trades SELECT * FROM trades",
        "DELETE FROM trades",
        "UPDATE trades SET price = 0",
        "DROP VIEW trades",
        "ALTER VIEW trades RENAME TO t",
        "SET threads = 1",
        "SET enable_external_access = true",
        "RESET lock_configuration",
        "SET VARIABLE k2_trades_files = ['/etc/passwd']",
        "PRAGMA enable_profiling",
        "INSTALL httpfs",
        "LOAD httpfs",
        "ATTACH ':memory:' AS other",
        "DETACH memory",
        "USE memory",
        "CALL pragma_version()",
        "CHECKPOINT",
        "BEGIN TRANSACTION",
        "EXPLAIN SELECT 1",
        "PREPARE p AS SELECT 1",
        "EXPORT DATABASE '/tmp/k2-export'",
        "VACUUM",
        "PIVOT trades ON symbol USING count(*)",
        "SELECT 1; SELECT 2",
        "SELECT 1; DROP VIEW trades",
    ],
)
def test_non_select_statements_are_refused(engine: QueryEngine, statement: str) -> None:
    with pytest.raises(ReadOnlyViolation):
        engine.sql(statement)
    assert engine.sql("SELECT count(*) AS n FROM trades").to_pylist() == [{"n": 34_419}]


def test_copy_is_refused_and_writes_nothing(engine: QueryEngine, tmp_path: Path) -> None:
    target = tmp_path / "x.csv"
    inside = Path(engine.plan().files[0]).parent / "x.csv"
    for statement in (
        f"COPY trades TO '{target}'",
        f"COPY (SELECT * FROM trades) TO '{inside}'",  # even inside the table's own directory
    ):
        with pytest.raises(ReadOnlyViolation, match="COPY"):
            engine.sql(statement)
    assert not target.exists()
    assert not inside.exists()


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM read_blob('/etc/hostname')",
        "SELECT * FROM sniff_csv('/etc/passwd')",
        "SELECT * FROM glob('/*')",
        "SELECT * FROM read_parquet('https://example.com/x.parquet')",
        "SELECT * FROM read_json('/etc/os-release')",
    ],
)
def test_reading_outside_the_warehouse_is_refused(engine: QueryEngine, query: str) -> None:
    with pytest.raises(ReadOnlyViolation, match="disabled"):
        engine.sql(query)


def test_the_catalog_next_to_the_table_is_out_of_reach(
    engine: QueryEngine, filled_lake: tuple[Catalog, LakeSettings]
) -> None:
    _, lake = filled_lake
    catalog_db = (lake.warehouse / "catalog.db").resolve()
    assert catalog_db.is_file()
    table_dir = Path(engine.plan().files[0]).parents[3]
    for path in (catalog_db, table_dir / ".." / ".." / "catalog.db"):
        with pytest.raises(ReadOnlyViolation):
            engine.sql("SELECT * FROM read_blob(?)", [str(path)])


def test_python_objects_are_not_scanned(engine: QueryEngine) -> None:
    secret = pa.table({"password": ["hunter2"]})  # noqa: F841 - DuckDB could scan locals by name
    with pytest.raises(QueryError, match="secret"):
        engine.sql("SELECT * FROM secret")


def test_invalid_sql_is_a_query_error(engine: QueryEngine) -> None:
    with pytest.raises(QueryError, match="empty"):
        engine.sql("  ;  ")
    with pytest.raises(QueryError, match="invalid SQL") as excinfo:
        engine.sql("SELEC 1")
    assert not isinstance(excinfo.value, ReadOnlyViolation)
    with pytest.raises(QueryError, match="query failed"):
        engine.sql("SELECT no_such_column FROM trades")
