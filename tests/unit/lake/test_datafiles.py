"""The writer's own Parquet files: per-column encodings, and column metrics and partitions equal to
what pyiceberg's writer computes for the same rows."""

from __future__ import annotations

from datetime import timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog
from pyiceberg.io.pyarrow import _dataframe_to_data_files
from pyiceberg.manifest import DataFile

from k2.config import LakeSettings
from k2.lake.datafiles import ColumnEncodings, column_encodings, write_data_files
from k2.lake.writer import TableWriter
from k2.schema import to_iceberg
from k2.schema.quality_event import QUALITY_EVENT

DICTIONARY = {"RLE_DICTIONARY", "PLAIN_DICTIONARY"}


def _writer(catalog: Catalog, lake: LakeSettings) -> TableWriter:
    return TableWriter(catalog, (lake.namespace, lake.trades_table), lake)


def _two_days(trades: pa.RecordBatch) -> pa.Table:
    """The bundled trades, the second half moved one day later (two partitions), sorted like the writer."""
    table = pa.Table.from_batches([trades])
    half = table.num_rows // 2
    later = table.slice(half)
    shifted = pc.add(later["timestamp"], pa.scalar(timedelta(days=1), pa.duration("us")))
    later = later.set_column(later.schema.get_field_index("timestamp"), later.schema.field("timestamp"), shifted)
    both = pa.concat_tables([table.slice(0, half), later])
    return both.sort_by([("symbol", "ascending"), ("timestamp", "ascending")])


def test_encodings_are_chosen_from_the_iceberg_types() -> None:
    got = column_encodings(to_iceberg(QUALITY_EVENT))
    assert got == ColumnEncodings(
        dictionary=["exchange", "symbol", "stream", "kind", "status", "detail"],
        encoding={
            "first_id": "DELTA_BINARY_PACKED",
            "last_id": "DELTA_BINARY_PACKED",
            "count": "DELTA_BINARY_PACKED",
            "trade_time": "DELTA_BINARY_PACKED",
            "detected_at": "DELTA_BINARY_PACKED",
            "status_at": "DELTA_BINARY_PACKED",
            "recovered": "DELTA_BINARY_PACKED",
        },
    )


def test_written_files_use_the_chosen_encodings(catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch) -> None:
    writer = _writer(catalog, lake)
    writer.append(trades)
    tasks = list(writer.table.scan().plan_files())
    assert tasks
    for task in tasks:
        meta = pq.ParquetFile(task.file.file_path.removeprefix("file://")).metadata
        group = meta.row_group(0)
        columns = {group.column(i).path_in_schema: group.column(i) for i in range(meta.num_columns)}
        assert group.column(0).compression == "ZSTD"
        encodings = {path: set(c.encodings) for path, c in columns.items()}
        for path in ("timestamp", "source_sequence", "ingestion_timestamp", "platform_sequence"):
            assert encodings[path] == {"DELTA_BINARY_PACKED", "RLE"}, path
            assert not columns[path].has_dictionary_page
        for path in (
            "symbol",
            "exchange",
            "asset_class",
            "currency",
            "side",
            "price",
            "quantity",
            "trade_conditions.list.element",
            "vendor_data.key_value.key",
        ):
            assert encodings[path] & DICTIONARY, path
            assert columns[path].has_dictionary_page, path
        for path in ("message_id", "trade_id", "vendor_data.key_value.value", "is_sample_data"):
            assert not encodings[path] & DICTIONARY, path
            assert not columns[path].has_dictionary_page, path
        field_ids = {f.name: f.metadata[b"PARQUET:field_id"] for f in pq.read_schema(task.file.file_path)}
        assert field_ids["timestamp"] == b"6"
        assert field_ids["vendor_data"] == b"15"


def test_row_groups_hold_at_most_the_tables_row_group_limit(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    """K2's tables are created with 128 Ki-row groups, and the writer honours the table's limit."""
    writer = _writer(catalog, lake)
    assert writer.table.properties["write.parquet.row-group-limit"] == "131072"
    with writer.table.transaction() as tx:
        tx.set_properties({"write.parquet.row-group-limit": "10000"})
    writer.refresh()
    writer.append(trades)
    sizes = []
    for task in writer.table.scan().plan_files():
        meta = pq.ParquetFile(task.file.file_path.removeprefix("file://")).metadata
        sizes += [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sum(sizes) == trades.num_rows
    assert max(sizes) == 10_000 and len(sizes) >= trades.num_rows // 10_000


def _metrics(f: DataFile) -> tuple[object, ...]:
    return (
        f.record_count,
        f.partition,
        f.value_counts,
        f.null_value_counts,
        f.nan_value_counts,
        f.lower_bounds,
        f.upper_bounds,
        f.file_format,
        len(f.split_offsets or []),
    )


def test_metrics_and_partitions_equal_pyicebergs(catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch) -> None:
    table = _writer(catalog, lake).table
    data = _two_days(trades)

    ours = write_data_files(table.metadata, table.io, data)
    theirs = list(_dataframe_to_data_files(table_metadata=table.metadata, df=data, io=table.io))

    assert len(ours) == len(theirs) == 3  # the bundled trades cross midnight, then one day later
    by_partition = {str(f.partition): f for f in theirs}
    assert {str(f.partition) for f in ours} == set(by_partition)
    assert sum(f.record_count for f in ours) == 34_419
    for f in ours:
        assert _metrics(f) == _metrics(by_partition[str(f.partition)])
        written = pq.read_table(f.file_path.removeprefix("file://"))
        assert written.num_rows == f.record_count
        micros = pc.min_max(written["timestamp"].cast(pa.int64()))
        assert int.from_bytes(f.lower_bounds[6], "little") == micros["min"].as_py()
        assert int.from_bytes(f.upper_bounds[6], "little") == micros["max"].as_py()
        assert f.null_value_counts[12] == 0


def test_nothing_to_write_writes_no_file(catalog: Catalog, lake: LakeSettings) -> None:
    table = _writer(catalog, lake).table
    assert write_data_files(table.metadata, table.io, table.schema().as_arrow().empty_table()) == []
