"""Where the engine's DuckDB reads data files from: the local warehouse, or S3 through the table's FileIO.

DuckDB's own S3 support (the httpfs extension) is never downloaded or loaded: the engine runs offline
with extensions off. For an ``s3://`` table the engine registers an fsspec filesystem with DuckDB
(``DuckDBPyConnection.register_filesystem``): fsspec's ``ArrowFSWrapper`` around the very
``pyarrow.fs.S3FileSystem`` pyiceberg's FileIO reads and writes the table with, so endpoint, region,
credentials and path-style addressing are the catalog's, and TLS is verified as pyarrow's AWS SDK does
by default for an ``https`` endpoint (nothing here turns it off). The credentials stay inside that
object: DuckDB holds no secret, and nothing here logs or formats them.

What a query may read is one place, :attr:`DataStore.root`: the namespace's directory or S3 prefix,
which holds K2's tables. DuckDB's ``allowed_directories`` enforces it on every path a query names
(:func:`k2.query.sql.open_connection`); the S3 filesystem refuses anything else a second time (another
bucket or prefix, ``.``/``..`` segments, writes), so a difference between how DuckDB and fsspec parse a
URL cannot open another object.

DuckDB reports an error raised inside a Python filesystem as a plain ``duckdb.Error`` whose text is the
Python traceback; :func:`translate` reads the exception's name and message from it, so an S3 object that
vanished (maintenance removed it) is :class:`~k2.errors.SnapshotExpired` exactly as a vanished local file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import duckdb
from fsspec import AbstractFileSystem
from fsspec.implementations.arrow import ArrowFSWrapper
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.table import Table

from k2.errors import QueryError, ReadOnlyViolation, SnapshotExpired

OBJECT_STORE_SCHEMES = ("s3", "s3a")


def data_path(uri: str) -> str:
    """How DuckDB names a data file of the table: a local path for ``file://`` URIs (and plain paths),
    the URI itself on S3; QueryError for any other store."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return parsed.path if parsed.scheme else uri
    if parsed.scheme in OBJECT_STORE_SCHEMES:
        return uri
    raise QueryError(f"data file {uri!r}: only local and s3:// warehouses can be queried")


@dataclass(frozen=True)
class DataStore:
    """What the engine's DuckDB may read (``root``, with a trailing ``/``) and the filesystem it reads
    it through (None: DuckDB's own local filesystem)."""

    root: str
    filesystem: AbstractFileSystem | None = None


def data_store(table: Table) -> DataStore:
    """The namespace directory (or S3 prefix) holding ``table`` and K2's other tables beside it."""
    root = data_path(table.location()).rstrip("/").rsplit("/", 1)[0] + "/"
    scheme, bucket, _ = PyArrowFileIO.parse_location(root)
    if scheme not in OBJECT_STORE_SCHEMES:
        return DataStore(root)
    io = table.io
    if not isinstance(io, PyArrowFileIO):
        raise QueryError(f"cannot read {root}: the table's FileIO is {type(io).__name__}, not PyArrowFileIO")
    return DataStore(root, ScopedS3(io.fs_by_scheme(scheme, bucket), root))


class ScopedS3(ArrowFSWrapper):  # type: ignore[misc]  # fsspec has no type hints
    """A read-only fsspec view of a ``pyarrow.fs.S3FileSystem`` limited to the objects under ``root``.

    DuckDB sends ``s3://`` and ``s3a://`` paths here (``protocol``); every open, stat and listing is
    checked against ``root`` after fsspec has parsed the path, i.e. on the key S3 will be asked for.
    """

    protocol = OBJECT_STORE_SCHEMES
    cachable = False  # one per engine or pool, not kept in fsspec's instance cache

    def __init__(self, fs: Any, root: str) -> None:
        super().__init__(fs)
        self._root = self._strip_protocol(root).rstrip("/") + "/"

    def _checked(self, path: str) -> str:
        key: str = self._strip_protocol(path)
        inside = key == self._root[:-1] or key.startswith(self._root)
        if not inside or any(part in (".", "..") for part in key.split("/")):
            raise PermissionError(f"{path!r} is outside the tables' location")
        return key

    def _open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if mode != "rb":
            raise PermissionError(f"{path!r}: the query engine only reads")
        return super()._open(self._checked(path), mode, *args, **kwargs)

    def info(self, path: str, **kwargs: Any) -> Any:
        return super().info(self._checked(path), **kwargs)

    def ls(self, path: str, detail: bool = False, **kwargs: Any) -> Any:
        return super().ls(self._checked(path), detail=detail, **kwargs)

    def rm(self, path: Any, *args: Any, **kwargs: Any) -> None:
        raise PermissionError("the query engine only reads")

    mv = mkdir = makedirs = rm


def python_error(exc: duckdb.Error) -> tuple[str, str] | None:
    """(exception name, message) of the Python exception a registered filesystem raised inside DuckDB
    (the last exception of the traceback text DuckDB reports); None for DuckDB's own errors."""
    text = str(exc)
    marker = "Traceback (most recent call last):\n"
    if type(exc) is not duckdb.Error or marker not in text:
        return None
    lines = text.rsplit(marker, 1)[1].splitlines()
    for i, line in enumerate(lines):
        if not line.startswith(" "):  # after the indented frames: "module.Name: message"
            name, _, message = line.partition(": ")
            return name.rsplit(".", 1)[-1], "\n".join([message, *lines[i + 1 :]]).strip()
    return None


def translate(exc: duckdb.Error, table: str, context: str = "query failed") -> QueryError:
    """DuckDB's error as K2's: a data file that does not exist (any more) is SnapshotExpired (the
    engine refreshes and retries once); a refused path ReadOnlyViolation; anything else QueryError."""
    found = python_error(exc)
    name, message = found if found is not None else (type(exc).__name__, str(exc))
    if isinstance(exc, duckdb.IOException) or name == "FileNotFoundError":
        return SnapshotExpired(
            f"cannot read the data files of {table}: {message}; removed by table maintenance (an expired "
            "snapshot) or lost; retry the query"
        )
    if isinstance(exc, duckdb.PermissionException) or name == "PermissionError":
        return ReadOnlyViolation(f"refused: {message}")
    return QueryError(f"{context}: {message}")
