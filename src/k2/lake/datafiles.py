"""Parquet data files for an Iceberg table, written by K2 with pyarrow and pyiceberg's public helpers.

pyiceberg's writer dictionary-encodes every column; for unique-per-row int64 columns (timestamps,
sequences) the dictionary fills up and pyarrow falls back to PLAIN, which DuckDB decodes slowly.
So K2 writes its data files itself: split by the table's partition spec (the spec's own transforms,
:meth:`Transform.pyarrow_transform`), one Parquet file per partition (bin-packed to
``write.target-file-size-bytes``), every column stamped with its Iceberg field id
(:func:`file_arrow_schema`), encodings chosen per column from its Iceberg type
(:func:`column_encodings`), the table's ``write.parquet.*`` properties honoured, and the column
metrics read back from the Parquet footer with pyiceberg's ``data_file_statistics_from_parquet_metadata``.
Only public pyiceberg names are used (tests/unit/lake/test_public_api.py checks every module).
docs/lake.md has the measurements.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import wait
from dataclasses import dataclass
from typing import IO, Any, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import (
    bin_pack_arrow_table,
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
    schema_to_pyarrow,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.partitioning import PartitionFieldValue, PartitionKey, PartitionSpec
from pyiceberg.schema import Schema, index_by_id, sanitize_column_names
from pyiceberg.table import TableProperties
from pyiceberg.table.locations import load_location_provider
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.sorting import SortDirection
from pyiceberg.transforms import IdentityTransform
from pyiceberg.typedef import Record
from pyiceberg.types import (
    DateType,
    DecimalType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    TimestampType,
    TimestamptzType,
    TimeType,
)
from pyiceberg.utils.concurrent import ExecutorFactory
from pyiceberg.utils.properties import property_as_int

from k2.errors import LakeError
from k2.lake.files import delete_paths

# Low-cardinality in practice (symbols, venues, sides, prices and quantities repeat a lot).
_DICTIONARY_TYPES = (StringType, DecimalType, IntegerType, DateType)
# Physically int64 and close to monotonic within a sorted file: deltas pack into a few bits.
_DELTA_TYPES = (LongType, TimestampType, TimestamptzType, TimeType)


@dataclass(frozen=True)
class ColumnEncodings:
    """Parquet writer settings for one file schema: the dictionary columns and explicit encodings."""

    dictionary: list[str]
    encoding: dict[str, str]


def _is_id(name: str) -> bool:
    return name == "id" or name.endswith("_id")


def column_encodings(schema: Schema) -> ColumnEncodings:
    """Encodings per Parquet column path, from the Iceberg types.

    Dictionary for strings (except ids — ``*_id`` — and map values, which are free-form and often
    unique per row), decimals, ints and dates; ``DELTA_BINARY_PACKED`` for longs, timestamps and
    times; the writer's default (PLAIN, or RLE for booleans) for everything else.
    """
    fields = index_by_id(schema)
    map_values = {f.field_type.value_id for f in fields.values() if isinstance(f.field_type, MapType)}
    dictionary: list[str] = []
    encoding: dict[str, str] = {}
    for path, field_id in parquet_path_to_id_mapping(schema).items():
        field = fields[field_id]
        if isinstance(field.field_type, _DELTA_TYPES):
            encoding[path] = "DELTA_BINARY_PACKED"
        elif isinstance(field.field_type, _DICTIONARY_TYPES):
            if isinstance(field.field_type, StringType) and (_is_id(field.name) or field_id in map_values):
                continue
            dictionary.append(path)
    return ColumnEncodings(dictionary, encoding)


def _small(t: pa.DataType) -> pa.DataType:
    """``t`` with 64-bit-offset strings and lists replaced by their 32-bit forms (field metadata kept)."""
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_binary(t):
        return pa.binary()
    if pa.types.is_large_list(t) or pa.types.is_list(t):
        return pa.list_(_small_field(t.value_field))
    if pa.types.is_map(t):
        return pa.map_(_small_field(t.key_field), _small_field(t.item_field))
    if pa.types.is_struct(t):
        return pa.struct([_small_field(f) for f in t])
    return t


_FIELD_ID = b"PARQUET:field_id"


def _small_field(f: pa.Field) -> pa.Field:
    """``f`` with 32-bit offsets, keeping only its field id (docs would be repeated in every file)."""
    ids = {_FIELD_ID: f.metadata[_FIELD_ID]} if f.metadata and _FIELD_ID in f.metadata else None
    return pa.field(f.name, _small(f.type), f.nullable, ids)


def file_arrow_schema(schema: Schema) -> pa.Schema:
    """The Arrow schema of K2's Parquet files for ``schema``: every field (nested ones too) carries its
    Iceberg field id (``PARQUET:field_id``), so readers match columns by id, not by name."""
    return pa.schema([_small_field(f) for f in schema_to_pyarrow(schema, include_field_ids=True)])


def parquet_writer_options(properties: dict[str, str]) -> dict[str, Any]:
    """``pyarrow.parquet.ParquetWriter`` options from a table's ``write.parquet.*`` properties."""
    codec = properties.get(TableProperties.PARQUET_COMPRESSION, TableProperties.PARQUET_COMPRESSION_DEFAULT)
    return {
        "compression": "none" if codec == "uncompressed" else codec,
        "compression_level": property_as_int(properties, TableProperties.PARQUET_COMPRESSION_LEVEL, None),
        "data_page_size": property_as_int(
            properties, TableProperties.PARQUET_PAGE_SIZE_BYTES, TableProperties.PARQUET_PAGE_SIZE_BYTES_DEFAULT
        ),
        "dictionary_pagesize_limit": property_as_int(
            properties, TableProperties.PARQUET_DICT_SIZE_BYTES, TableProperties.PARQUET_DICT_SIZE_BYTES_DEFAULT
        ),
        "write_batch_size": property_as_int(
            properties, TableProperties.PARQUET_PAGE_ROW_LIMIT, TableProperties.PARQUET_PAGE_ROW_LIMIT_DEFAULT
        ),
    }


def sort_keys(metadata: TableMetadata) -> list[tuple[str, str]]:
    """The table's sort order as ``pyarrow`` sort keys (identity transforms only)."""
    keys: list[tuple[str, str]] = []
    schema = metadata.schema()
    order = metadata.sort_order_by_id(metadata.default_sort_order_id)
    for field in order.fields if order is not None else []:
        if not isinstance(field.transform, IdentityTransform):
            raise LakeError(f"sort order field {field} is not an identity transform: not supported")
        direction = "ascending" if field.direction == SortDirection.ASC else "descending"
        keys.append((schema.find_column_name(field.source_id) or "", direction))
    return keys


def split_by_partition(
    spec: PartitionSpec, schema: Schema, arrow: pa.Table
) -> Iterator[tuple[PartitionKey | None, pa.Table]]:
    """``arrow`` split into one table per partition of ``spec``, each keeping the input's row order."""
    if spec.is_unpartitioned():
        yield None, arrow
        return
    keys: dict[str, pa.Array] = {}
    for i, field in enumerate(spec.fields):
        source = schema.find_field(field.source_id)
        column = arrow.column(schema.find_column_name(field.source_id) or source.name)
        keys[f"p{i}"] = field.transform.pyarrow_transform(source.field_type)(column)
    values = pa.table(keys)
    distinct = values.group_by(list(keys)).aggregate([]).to_pylist()
    for key in distinct:
        mask: pa.Array | None = None
        for name, value in key.items():
            match = pc.is_null(values[name]) if value is None else pc.equal(values[name], value)
            mask = match if mask is None else pc.and_(mask, match)
        part = arrow if len(distinct) == 1 else arrow.filter(mask)
        field_values = [PartitionFieldValue(f, key[f"p{i}"]) for i, f in enumerate(spec.fields)]
        yield PartitionKey(field_values=field_values, partition_spec=spec, schema=schema), part


def write_data_files(
    metadata: TableMetadata, io: FileIO, arrow: pa.Table, *, one_file_per_partition: bool = False
) -> list[DataFile]:
    """Write ``arrow`` (already sorted) as Parquet data files of the table; nothing is committed.

    Split by the default partition spec, then bin-packed to ``write.target-file-size-bytes`` like
    pyiceberg does (or one file per partition: compaction sizes its groups itself). On failure, the
    files already written are deleted before re-raising.
    """
    if arrow.num_rows == 0:
        return []
    table_schema = metadata.schema()
    file_schema = sanitize_column_names(table_schema)
    target_size = property_as_int(
        metadata.properties,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT,
    )
    assert target_size is not None  # the default is not None
    locations = load_location_provider(metadata.location, metadata.properties)
    write_uuid = uuid.uuid4()
    tasks: list[tuple[str, PartitionKey | None, list[pa.RecordBatch] | pa.Table]] = []
    for key, part in split_by_partition(metadata.spec(), table_schema, arrow):
        chunks = [part] if one_file_per_partition else bin_pack_arrow_table(part, target_size)
        for chunk in chunks:
            name = f"00000-{len(tasks)}-{write_uuid}.parquet"
            tasks.append((locations.new_data_location(name, key), key, chunk))
    writer = _FileWriter(metadata, io, file_schema)
    executor = ExecutorFactory.get_or_create()
    futures = [executor.submit(writer.write, *task) for task in tasks]
    wait(futures)  # all of them, so that no file appears after the cleanup below
    try:
        return [future.result() for future in futures]
    except BaseException:
        delete_paths(io, [path for path, _, _ in tasks])
        raise


class _FileWriter:
    """Writes one partition's rows to one Parquet file and describes it as a :class:`DataFile`."""

    def __init__(self, metadata: TableMetadata, io: FileIO, file_schema: Schema) -> None:
        self._metadata = metadata
        self._io = io
        self._schema = file_schema
        self._arrow_schema = file_arrow_schema(file_schema)
        encodings = column_encodings(file_schema)
        self._options: dict[str, Any] = {
            **parquet_writer_options(metadata.properties),
            "use_dictionary": encodings.dictionary,
            "column_encoding": encodings.encoding,
            "store_decimal_as_integer": True,
        }
        self._row_group_rows = property_as_int(
            metadata.properties,
            TableProperties.PARQUET_ROW_GROUP_LIMIT,
            TableProperties.PARQUET_ROW_GROUP_LIMIT_DEFAULT,
        )
        self._sort_order_id = metadata.default_sort_order_id if sort_keys(metadata) else None

    def write(self, path: str, key: PartitionKey | None, rows: list[pa.RecordBatch] | pa.Table) -> DataFile:
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_batches(rows)
        table = table.select(self._arrow_schema.names).cast(self._arrow_schema)
        output = self._io.new_output(path)
        with output.create(overwrite=True) as stream:
            with pq.ParquetWriter(cast(IO[Any], stream), schema=table.schema, **self._options) as writer:
                writer.write(table, row_group_size=self._row_group_rows)
            parquet_metadata = writer.writer.metadata
        statistics = data_file_statistics_from_parquet_metadata(
            parquet_metadata=parquet_metadata,
            stats_columns=compute_statistics_plan(self._schema, self._metadata.properties),
            parquet_column_mapping=parquet_path_to_id_mapping(self._schema),
        )
        return DataFile.from_args(
            content=DataFileContent.DATA,
            file_path=path,
            file_format=FileFormat.PARQUET,
            partition=key.partition if key is not None else Record(),
            file_size_in_bytes=len(output),
            sort_order_id=self._sort_order_id,
            spec_id=self._metadata.default_spec_id,
            equality_ids=None,
            key_metadata=None,
            **statistics.to_serialized_dict(),
        )
