"""DuckDB side of the engine: the locked-down connection, the read-only guard and the query texts.

Every query text here is a constant or assembled from constant fragments chosen by code (hence the
``noqa: S608`` markers); file lists and every user value are bound as named parameters (``$files``,
``$symbol``, ...), never spliced into SQL.

Files are read by Iceberg field id (:func:`parquet_source`), never by position or name: a table
written before a column was added (``instrument``, trade schema v3) holds files without it, and
DuckDB reads those with the column null, beside newer files, in any order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import duckdb
import pyarrow as pa
from fsspec import AbstractFileSystem

from k2.errors import QueryError, ReadOnlyViolation
from k2.query.exact import LIMB_MASK, NotionalMethod, combine_limbs, unscaled_ints
from k2.schema import TRADE_ARROW_SCHEMA


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


TRADE_COLUMNS = ", ".join(quote_ident(f.name) for f in TRADE_ARROW_SCHEMA)
_FIELD_ID = b"PARQUET:field_id"

_DUCKDB_TYPES = {
    "string": "VARCHAR",
    "int64": "BIGINT",
    "bool": "BOOLEAN",
    "timestamp[us, tz=UTC]": "TIMESTAMPTZ",
    "decimal128(38, 12)": "DECIMAL(38, 12)",
    "list<element: string not null>": "VARCHAR[]",
    "list<element: string>": "VARCHAR[]",
    "map<string, string>": "MAP(VARCHAR, VARCHAR)",
}


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@cache
def parquet_source(schema: pa.Schema, *, file_row_number: bool = False, files: str = "$files") -> str:
    """``read_parquet($files, schema = map {...})`` reading the planned files into ``schema``'s columns
    by the field ids they carry (``PARQUET:field_id``): a column a file lacks (written before the
    column was added) reads as NULL. ``schema`` is one of K2's canonical schemas and ``files`` the
    parameter (or variable) holding the file list: code, never input."""
    entries = ", ".join(
        f"{int(f.metadata[_FIELD_ID])}: {{name: {_literal(f.name)}, type: {_literal(_DUCKDB_TYPES[str(f.type)])}, "
        "default_value: NULL}"
        for f in schema
    )
    row_number = ", file_row_number = true" if file_row_number else ""
    return f"read_parquet({files}{row_number}, schema = map {{{entries}}})"


TRADES_SOURCE = parquet_source(TRADE_ARROW_SCHEMA)


def open_connection(
    allowed_directory: str,
    *,
    filesystem: AbstractFileSystem | None = None,
    memory_limit: str | None = None,
    threads: int | None = None,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that can read files under ``allowed_directory`` and nothing else.

    External access is off (no other files, no network, no extension install/load, no Python
    object scans), the UTC time zone is fixed, and the configuration is locked so a statement
    cannot undo any of it. ``filesystem``: how an object-store directory (``s3://...``) is read
    (:func:`k2.query.files.data_store`). ``memory_limit`` (e.g. ``"2GB"``) and ``threads`` bound
    the whole database, including every ``cursor()`` of the connection (the REST API's workers).
    """
    con = duckdb.connect(
        ":memory:",
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "python_enable_replacements": False,
        },
    )
    try:
        if filesystem is not None:
            con.register_filesystem(filesystem)
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET parquet_metadata_cache = true")  # data files are immutable
        con.execute("SET temp_directory = ''")  # no spilling, and no implicitly allowed temp dir
        con.execute("SET allowed_directories = $dirs", {"dirs": [allowed_directory]})
        if memory_limit is not None:
            con.execute("SET memory_limit = $limit", {"limit": memory_limit})
        if threads is not None:
            con.execute("SET threads = $threads", {"threads": threads})
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except duckdb.Error as exc:
        con.close()
        raise QueryError(f"cannot configure DuckDB: {exc}") from exc
    return con


def check_read_only(con: duckdb.DuckDBPyConnection, query: str) -> str:
    """The query text if it is exactly one SELECT (incl. WITH/VALUES/DESCRIBE/SUMMARIZE/SHOW) statement.

    Anything else (several statements, COPY, ATTACH, CREATE, INSERT, SET, PRAGMA, INSTALL/LOAD,
    EXPLAIN, CALL, ...) raises ReadOnlyViolation before anything runs. File access outside the
    table's directory is refused by the connection itself (see :func:`open_connection`).
    """
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        raise QueryError(f"invalid SQL: {exc}") from exc
    if not statements:
        raise QueryError("empty query")
    if len(statements) != 1:
        raise ReadOnlyViolation(f"exactly one statement is allowed, got {len(statements)}")
    statement = statements[0]
    if statement.type != duckdb.StatementType.SELECT:
        raise ReadOnlyViolation(f"only SELECT queries are allowed, not {statement.type.name}")
    return str(statement.query)


def run(con: duckdb.DuckDBPyConnection, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> Any:
    """Execute one read-only query text and return its Arrow table."""
    relation = con.sql(query, params=params)
    if relation is None:  # not a query that returns rows
        raise QueryError("the statement returned no result")
    return relation.to_arrow_table()


def cutoff_sql(where: str, column: str, source: str = TRADES_SOURCE) -> str:
    """The ``column`` value of the ``$limit``-th row in ``column`` order: a cheap first step that
    reads one column, so the full-width query only decodes rows at or before it (late
    materialisation by hand). ``column`` is one of K2's own quoted column names and ``source`` a
    :func:`parquet_source`, never input."""
    return (
        f"SELECT max({column}) AS cutoff FROM (SELECT {column} FROM {source} "  # noqa: S608
        f"WHERE {where} ORDER BY {column} LIMIT $limit)"
    )


def trades_sql(where: str) -> str:
    return (
        f"SELECT {TRADE_COLUMNS} FROM {TRADES_SOURCE} WHERE {where} "  # noqa: S608
        'ORDER BY "timestamp", source_sequence NULLS LAST, platform_sequence LIMIT $limit'
    )


# Trades are bucketed by q = rel // $width, where rel = epoch_us(timestamp) - $origin and $origin is
# a multiple of $width at or before every timestamp (so rel >= 0 and the truncating division floors);
# the bucket starts at $origin + q * $width, and rel % $width is the trade's offset in its bucket.
#
# Order of trades inside a bucket: exchange time, then the venue's sequence for equal times. The
# compact key is a BIGINT, (offset in bucket) x (sequence span) + (sequence - min), usable when the
# plan's metrics prove it fits 63 bits (minute bars always do); the wide key is a HUGEINT that always
# fits. A key only has to order the trades of one bucket.
_WIDE_KEY = "(rel::HUGEINT << 64) + coalesce(source_sequence, 0)"
_COMPACT_KEY = "rel % $width * $key_m + (coalesce(source_sequence, $key_s0) - $key_s0)"
# Unscaled integer of a decimal(38, 12) value, exactly: integer part and fraction separately.
_UNSCALED = "(CAST(floor({c}) AS HUGEINT) * 1000000000000 + CAST(({c} - floor({c})) * 1000000000000 AS HUGEINT))"
_MASK = str(LIMB_MASK)
_LIMB_SUMS = {
    "n0": "sum(p0 * q0)",
    "n1": "sum(p0 * q1 + p1 * q0)",
    "n2": "sum(p0 * q2 + p1 * q1 + p2 * q0)",
    "n3": "sum(p1 * q2 + p2 * q1)",
    "n4": "sum(p2 * q2)",
    "v0": "sum(q0)",
    "v1": "sum(q1)",
    "v2": "sum(q2)",
}


def _limbs(name: str) -> str:
    u = f"{name}u"
    return f"{u} & {_MASK} AS {name}0, ({u} >> 42) & {_MASK} AS {name}1, {u} >> 84 AS {name}2"


def aggregate_sql(
    where: str, method: NotionalMethod, *, bucketed: bool, compact_key: bool = False, by_exchange: bool = False
) -> str:
    """Exact OHLCV bars (``bucketed``) or one VWAP aggregate over the filtered trades.

    One GROUP BY (by bucket, or none for VWAP) computes everything, except for the chunked method
    with row numbers: there a first level groups by bucket *and* row-number chunk, so that no group
    sum can overflow, and a second level merges each bucket's chunks (open/close by their order
    keys, the partial sums as lists that Python adds up exactly). ``by_exchange`` (bucketed only):
    bars per bucket and exchange, ordered by bucket then exchange. Files are read by field id
    (:func:`parquet_source`). Parameters: ``$files``; bucketed: ``$width`` (µs), ``$origin`` (µs)
    and, with ``compact_key``, ``$key_m``, ``$key_s0``; ``$chunk_rows`` (chunked with row numbers
    only); plus the filter's.
    """
    venue = bucketed and by_exchange
    chunked = method.needs_row_numbers
    limbs = method.kind == "limbs"
    source = parquet_source(TRADE_ARROW_SCHEMA, file_row_number=chunked)
    # Level 1: read and filter; level 2: bucket number, order key (and limbs).
    cols1 = ["price", "quantity"]
    cols2 = ["price", "quantity"]
    if bucketed:
        cols1 += ['epoch_us("timestamp") - $origin AS rel', "source_sequence"]
        cols2 += ["rel // $width AS q", f"{_COMPACT_KEY if compact_key else _WIDE_KEY} AS k"]
    if venue:
        cols1.append("exchange")
        cols2.append("exchange")
    if chunked:
        cols1.append("file_row_number // $chunk_rows AS chunk")
        cols2.append("chunk")
    if limbs:
        cols1 += [f"{_UNSCALED.format(c='price')} AS pu", f"{_UNSCALED.format(c='quantity')} AS qu"]
        cols2 += [_limbs("p"), _limbs("q")]
        sums = [f"{expr} AS {name}" for name, expr in _LIMB_SUMS.items()]
    else:
        sums = ["sum(price * quantity) AS notional", "sum(quantity) AS volume"]
    aggregates = ["count(*) AS trades", *sums]
    if bucketed:
        aggregates = ["arg_min(price, k) AS open", "max(price) AS high", "min(price) AS low",
                      "arg_max(price, k) AS close", *aggregates]  # fmt: skip
    keys = ["q", "exchange"] if venue else ["q"]
    order = f" GROUP BY {', '.join(keys)} ORDER BY {', '.join(keys)}"
    level1 = f"SELECT {', '.join(cols1)} FROM {source} WHERE {where}"  # noqa: S608
    src = f"SELECT {', '.join(cols2)} FROM ({level1})"  # noqa: S608
    if not chunked:
        head = ["$origin + q * $width AS bucket_us", *keys[1:]] if bucketed else []
        text = f"SELECT {', '.join(head + aggregates)} FROM ({src})"  # noqa: S608
        return text + order if bucketed else text
    fine = [*keys, *aggregates, "min(k) AS open_k", "max(k) AS close_k"] if bucketed else aggregates
    outer = ["sum(trades)::BIGINT AS trades", "list(notional) AS notional", "list(volume) AS volume"]
    if bucketed:
        outer = ["$origin + q * $width AS bucket_us", *keys[1:], "arg_min(open, open_k) AS open",
                 "max(high) AS high", "min(low) AS low", "arg_max(close, close_k) AS close", *outer]  # fmt: skip
    fine_group = ", ".join([*keys, "chunk"]) if bucketed else "chunk"
    text = (
        f"WITH fine AS (SELECT {', '.join(fine)} FROM ({src}) GROUP BY {fine_group}) "  # noqa: S608
        f"SELECT {', '.join(outer)} FROM fine"
    )
    return text + order if bucketed else text


def aggregate_sums(raw: pa.Table, method: NotionalMethod) -> tuple[list[int], list[int]]:
    """Per row of an :func:`aggregate_sql` result: exact notional (unscaled, scale 24) and volume
    (unscaled, scale 12), added up in Python integers from the sums, partial sums or limb sums."""
    if method.kind == "limbs":
        n = [_ints(raw.column(f"n{i}")) for i in range(5)]
        v = [_ints(raw.column(f"v{i}")) for i in range(3)]
        return [combine_limbs(limbs) for limbs in zip(*n, strict=True)], [
            combine_limbs(limbs) for limbs in zip(*v, strict=True)
        ]
    return _ints(raw.column("notional")), _ints(raw.column("volume"))


def _ints(column: pa.ChunkedArray) -> list[int]:
    """Each row's value (a decimal or a list of partial decimal sums) as an exact integer; 0 for null."""
    array = column.combine_chunks()
    if not pa.types.is_list(array.type):
        return [x or 0 for x in unscaled_ints(array)]
    values = unscaled_ints(array.values)
    offsets = array.offsets.to_pylist()
    return [sum(x or 0 for x in values[offsets[i] : offsets[i + 1]]) for i in range(len(offsets) - 1)]


def empty_select(schema: pa.Schema) -> str:
    """``SELECT CAST(NULL AS <type>) AS <column>, ... WHERE false``: ``schema``'s columns, no rows."""
    columns = ", ".join(f"CAST(NULL AS {_DUCKDB_TYPES[str(f.type)]}) AS {quote_ident(f.name)}" for f in schema)
    return f"SELECT {columns} WHERE false"


def create_view(con: duckdb.DuckDBPyConnection, name: str, files: Sequence[str], schema: pa.Schema) -> None:
    """(Re)point this connection's TEMP view ``name`` (a kind: trades, quotes, ...) at ``files``, bound
    through a variable, never spliced into SQL; with no files, the view has ``schema``'s columns and no
    rows. TEMP: cursors of one database (the API's workers) each keep their own views."""
    if not files:
        con.execute(f"CREATE OR REPLACE TEMP VIEW {quote_ident(name)} AS {empty_select(schema)}")
        return
    variable = f"k2_{name}_files"
    con.execute(f"SET VARIABLE {variable} = $files", {"files": list(files)})
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW {quote_ident(name)} AS "  # noqa: S608 - constants
        f"SELECT * FROM {parquet_source(schema, files=f'getvariable({_literal(variable)})')}"
    )


def distinct_symbols_sql() -> str:
    return f"SELECT DISTINCT symbol FROM {TRADES_SOURCE}"  # noqa: S608
