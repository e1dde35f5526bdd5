"""Lake health: how fragmented a table is, read from its current snapshot's manifests.

What `k2 maintain` prints and the scheduled maintenance exports as metrics (``k2_lake_*``, shown by
`k2 status`): live data files, partitions, files in the fullest partition, small files (below the
compaction threshold), average file size, snapshots retained. Small files piling up means
compaction is not running or not keeping up (alert ``K2LakeSmallFilesPilingUp``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

from pyiceberg.manifest import ManifestContent
from pyiceberg.table import Table


@dataclass(frozen=True)
class TableHealth:
    table: str
    data_files: int
    partitions: int
    max_partition_files: int
    small_files: int
    bytes: int
    records: int
    snapshots: int
    manifests: int

    @property
    def avg_file_bytes(self) -> float:
        return self.bytes / self.data_files if self.data_files else 0.0

    @property
    def files_per_partition(self) -> float:
        return self.data_files / self.partitions if self.partitions else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "avg_file_bytes": round(self.avg_file_bytes),
            "files_per_partition": round(self.files_per_partition, 1),
        }


def table_health(table: Table, small_file_bytes: int) -> TableHealth:
    """Health of ``table`` as loaded (its current snapshot); files below ``small_file_bytes`` are small."""
    snapshot = table.current_snapshot()
    per_partition: Counter[tuple[int, str]] = Counter()
    files = small = size = records = manifests = 0
    if snapshot is not None:
        listed = snapshot.manifests(table.io)
        manifests = len(listed)
        for manifest in listed:
            if manifest.content != ManifestContent.DATA:
                continue
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                data = entry.data_file
                files += 1
                size += data.file_size_in_bytes
                records += data.record_count
                small += data.file_size_in_bytes < small_file_bytes
                per_partition[(data.spec_id, repr(data.partition))] += 1
    return TableHealth(
        table=".".join(table.name()),
        data_files=files,
        partitions=len(per_partition),
        max_partition_files=max(per_partition.values(), default=0),
        small_files=small,
        bytes=size,
        records=records,
        snapshots=len(table.metadata.snapshots),
        manifests=manifests,
    )
