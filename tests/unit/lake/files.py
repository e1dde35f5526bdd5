"""What is on disk under a table's location versus what its snapshots reference."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from pyiceberg.table import Table

PYICEBERG = tuple(int(part) for part in version("pyiceberg").split(".")[:2])
"""The installed pyiceberg's (major, minor): K2 supports 0.11 and 0.12 (docs/lake.md)."""


def files_on_disk(table: Table) -> tuple[set[str], set[str], set[str]]:
    """(manifest lists, manifests, data files) on disk under the table's location."""
    root = Path(table.location().removeprefix("file://"))
    avro = {p.name for p in root.rglob("*.avro")}
    lists = {n for n in avro if n.startswith("snap-")}
    return lists, avro - lists, {p.name for p in root.rglob("*.parquet")}


def referenced_files(table: Table) -> tuple[set[str], set[str], set[str]]:
    """(manifest lists, manifests, data files) that the table's snapshots reference."""
    lists, manifests, data = set(), set(), set()
    for snapshot in table.metadata.snapshots:
        lists.add(Path(snapshot.manifest_list).name)
        for manifest in snapshot.manifests(table.io):
            manifests.add(Path(manifest.manifest_path).name)
            for entry in manifest.fetch_manifest_entry(table.io):
                data.add(Path(entry.data_file.file_path).name)
    return lists, manifests, data
