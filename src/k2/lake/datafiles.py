"""Parquet data files for an Iceberg append, written with K2's per-column encodings.

pyiceberg's writer dictionary-encodes every column; for unique-per-row int64 columns (timestamps,
sequences) the dictionary fills up and pyarrow falls back to PLAIN, which DuckDB decodes slowly.
:func:`write_data_files` mirrors pyiceberg's ``write_file`` (same file names and locations, field
ids, partition split, bin packing, table properties, and column metrics from the Parquet footer
through pyiceberg's own helpers) but chooses the encodings per column from its Iceberg type
(:func:`column_encodings`). docs/lake.md has the measurements.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from concurrent.futures import wait
from dataclasses import dataclass
from typing import IO, Any, cast

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import (
    ParquetFormatModel,
    _determine_partitions,
    _get_parquet_writer_kwargs,
    _to_requested_schema,
    bin_pack_arrow_table,
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
    pyarrow_to_schema,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.partitioning import PartitionKey
from pyiceberg.schema import Schema, index_by_id, sanitize_column_names
from pyiceberg.table import TableProperties, WriteTask
from pyiceberg.table.locations import load_location_provider
from pyiceberg.table.metadata import TableMetadata
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

from k2.lake import maintenance

_PARQUET = ParquetFormatModel()
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


def write_data_files(metadata: TableMetadata, io: FileIO, arrow: pa.Table) -> list[DataFile]:
    """Write ``arrow`` (already sorted) as Parquet data files of the table; nothing is committed.

    Split by the default partition spec and bin-packed to ``write.target-file-size-bytes`` like
    pyiceberg does. On failure, the files already written are deleted before re-raising.
    """
    if arrow.num_rows == 0:
        return []
    table_schema = metadata.schema()
    sanitized = sanitize_column_names(table_schema)
    file_schema = sanitized if sanitized != table_schema else table_schema
    task_schema = pyarrow_to_schema(
        arrow.schema, name_mapping=table_schema.name_mapping, format_version=metadata.format_version
    )
    target_size = property_as_int(
        metadata.properties,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT,
    )
    assert target_size is not None  # the default is not None
    write_uuid, counter = uuid.uuid4(), itertools.count(0)
    if metadata.spec().is_unpartitioned():
        parts: Iterator[tuple[PartitionKey | None, pa.Table]] = iter([(None, arrow)])
    else:
        parts = (
            (p.partition_key, p.arrow_table_partition)
            for p in _determine_partitions(spec=metadata.spec(), schema=table_schema, arrow_table=arrow)
        )
    locations = load_location_provider(metadata.location, metadata.properties)
    tasks: list[tuple[str, WriteTask]] = []
    for key, part in parts:
        for batches in bin_pack_arrow_table(part, target_size):
            task = WriteTask(write_uuid, next(counter), task_schema, batches, partition_key=key)
            path = locations.new_data_location(task.generate_data_file_filename("parquet"), key)
            tasks.append((path, task))
    writer = _FileWriter(metadata, io, file_schema)
    executor = ExecutorFactory.get_or_create()
    futures = [executor.submit(writer.write, task) for task in tasks]
    wait(futures)  # all of them, so that no file appears after the cleanup below
    try:
        return [future.result() for future in futures]
    except BaseException:
        maintenance.delete_paths(io, [path for path, _ in tasks])
        raise


class _FileWriter:
    """Writes one :class:`WriteTask` to one Parquet file and describes it as a :class:`DataFile`."""

    def __init__(self, metadata: TableMetadata, io: FileIO, file_schema: Schema) -> None:
        self._metadata = metadata
        self._io = io
        self._schema = file_schema
        encodings = column_encodings(file_schema)
        self._kwargs: dict[str, Any] = {
            **_get_parquet_writer_kwargs(metadata.properties),
            "use_dictionary": encodings.dictionary,
            "column_encoding": encodings.encoding,
            "store_decimal_as_integer": True,
        }
        self._row_group_rows = property_as_int(
            metadata.properties,
            TableProperties.PARQUET_ROW_GROUP_LIMIT,
            TableProperties.PARQUET_ROW_GROUP_LIMIT_DEFAULT,
        )

    def write(self, item: tuple[str, WriteTask]) -> DataFile:
        path, task = item
        batches = [
            _to_requested_schema(
                requested_schema=self._schema,
                file_schema=task.schema,
                batch=batch,
                include_field_ids=True,
                format_model=_PARQUET,
            )
            for batch in task.record_batches
        ]
        table = pa.Table.from_batches(batches)
        output = self._io.new_output(path)
        with output.create(overwrite=True) as stream:
            with pq.ParquetWriter(cast(IO[Any], stream), schema=table.schema, **self._kwargs) as writer:
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
            partition=task.partition_key.partition if task.partition_key else Record(),
            file_size_in_bytes=len(output),
            sort_order_id=None,
            spec_id=self._metadata.default_spec_id,
            equality_ids=None,
            key_metadata=None,
            **statistics.to_serialized_dict(),
        )
