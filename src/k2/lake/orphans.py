"""Orphan-file sweep: delete files under a table's location that no part of the table references.

A process killed between writing files and committing them (a writer's Parquet files, a
compaction's outputs, a commit's manifests) leaves files nothing points at. The sweep lists the
table's location and deletes every file that is

- not referenced: not the current ``metadata.json`` or one in its log, not a manifest list of a
  retained snapshot, not a manifest of one, not a data or delete file named by any entry of those
  manifests (live or deleted: deleted entries are expiry's business, not the sweep's); and
- older than ``min_age_s`` (default one day): a file written by a commit still in flight, here or
  in another process, is young and referenced a moment later, so it is never touched.

The referenced set is read *before* the listing, so a file committed in between is young.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pyiceberg.table import Table

from k2.errors import LakeError
from k2.lake.files import delete_paths, list_files


@dataclass
class OrphanSweep:
    """What one sweep found: deleted orphans, and the younger unreferenced files it left alone."""

    deleted: list[str] = field(default_factory=list)
    deleted_bytes: int = 0
    kept_young: int = 0  # unreferenced, younger than min_age_s
    kept_young_bytes: int = 0


def referenced_files(table: Table) -> set[str]:
    """Every file the table's metadata references (see the module docstring)."""
    metadata = table.metadata
    refs = {table.metadata_location, *(entry.metadata_file for entry in metadata.metadata_log)}
    for stats in [*getattr(metadata, "statistics", []), *getattr(metadata, "partition_statistics", [])]:
        refs.add(stats.statistics_path)
    seen_manifests: set[str] = set()
    for snapshot in metadata.snapshots:
        refs.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            if manifest.manifest_path in seen_manifests:
                continue
            seen_manifests.add(manifest.manifest_path)
            refs.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False):
                refs.add(entry.data_file.file_path)
    return refs


def sweep_orphans(table: Table, min_age_s: float, *, now_s: float | None = None, delete: bool = True) -> OrphanSweep:
    """Delete (``delete=False``: only count) the table's orphan files older than ``min_age_s``."""
    try:
        table.refresh()
        referenced = referenced_files(table)
    except Exception as exc:
        raise LakeError(f"cannot read the metadata of {'.'.join(table.name())}: {exc}") from exc
    cutoff = (time.time() if now_s is None else now_s) - min_age_s
    result = OrphanSweep()
    old: list[tuple[str, int]] = []
    for stored in list_files(table.io, table.location()):
        if stored.uri in referenced:
            continue
        if stored.modified_s <= cutoff:
            old.append((stored.uri, stored.size))
        else:
            result.kept_young += 1
            result.kept_young_bytes += stored.size
    if delete:
        delete_paths(table.io, [uri for uri, _ in old])
    result.deleted = [uri for uri, _ in old]
    result.deleted_bytes = sum(size for _, size in old)
    return result
