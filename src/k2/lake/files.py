"""Files of a table on its storage: delete, and list with sizes and ages (local directory or S3).

Listing goes through the table's own FileIO (pyiceberg's ``PyArrowFileIO.fs_by_scheme``), so the
orphan sweep sees exactly the storage, credentials and endpoint the catalog writes with.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pyarrow import fs
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import PyArrowFileIO

from k2.errors import LakeError
from k2.logging import get_logger


@dataclass(frozen=True)
class StoredFile:
    """One object under a table's location: its URI (as the table's metadata spells it), size and age."""

    uri: str
    size: int
    modified_s: float  # Unix seconds


def local_dir(location: str) -> Path | None:
    """The local directory of a ``file://`` (or plain path) location; None for object stores."""
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path)
    return None


def delete_paths(io: FileIO, paths: Iterable[str]) -> int:
    """Delete files, ignoring ones already gone; returns how many were deleted."""
    deleted = 0
    for path in paths:
        try:
            io.delete(path)
            deleted += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            get_logger(__name__).warning("lake.delete_failed", path=path, error=str(exc))
    return deleted


def list_files(io: FileIO, location: str) -> Iterator[StoredFile]:
    """Every file under ``location`` (recursively), with size and modification time.

    URIs are rebuilt in the location's own form (``file:///...`` or ``s3://bucket/...``) so they
    compare equal to the paths written in the table's metadata.
    """
    if not isinstance(io, PyArrowFileIO):
        raise LakeError(f"cannot list {location}: the table's FileIO is {type(io).__name__}, not PyArrowFileIO")
    scheme, netloc, path = PyArrowFileIO.parse_location(location)
    filesystem = io.fs_by_scheme(scheme, netloc)
    root = path.rstrip("/")
    try:
        infos = filesystem.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise LakeError(f"cannot list {location}: {exc}") from exc
    prefix = location.rstrip("/")
    files = [info for info in infos if info.type == fs.FileType.File]
    # Object stores may list "directory marker" objects (``.../data``) beside the files under them.
    parents = {path.rsplit("/", 1)[0] for path in (info.path for info in files) if "/" in path}
    for info in files:
        if info.path.rstrip("/") in parents:
            continue
        relative = info.path[len(root) :].lstrip("/") if info.path.startswith(root) else info.path
        modified = info.mtime.timestamp() if info.mtime is not None else 0.0
        yield StoredFile(f"{prefix}/{relative}", int(info.size or 0), modified)
