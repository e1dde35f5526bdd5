"""The Iceberg table of quality events (gaps, duplicates, reorders, anomalies), from the canonical schema.

Small and append-only: partitioned by ``day(detected_at)``, sorted by symbol. Gap status changes
are new rows with the same ``event_id`` (see :mod:`k2.schema.quality_event`).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError, TableAlreadyExistsError
from pyiceberg.expressions import EqualTo
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.table import Table
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import DayTransform, IdentityTransform

from k2.config import K2Settings
from k2.lake.catalog import TABLE_PROPERTIES
from k2.schema import to_iceberg
from k2.schema.quality_event import QUALITY_EVENT, EventKind


def load_or_create_events_table(catalog: Catalog, settings: K2Settings) -> Table:
    """The quality-events table, created from the canonical schema on first use."""
    identifier = (settings.lake.namespace, settings.quality.events_table)
    try:
        return catalog.load_table(identifier)
    except NoSuchTableError:
        pass
    schema = to_iceberg(QUALITY_EVENT)
    spec = PartitionSpec(
        PartitionField(schema.find_field("detected_at").field_id, 1000, DayTransform(), "detected_day")
    )
    order = SortOrder(SortField(source_id=schema.find_field("symbol").field_id, transform=IdentityTransform()))
    properties = {**TABLE_PROPERTIES, "k2.schema-version": str(QUALITY_EVENT.version)}
    try:
        return catalog.create_table(
            identifier, schema=schema, partition_spec=spec, sort_order=order, properties=properties
        )
    except TableAlreadyExistsError:
        return catalog.load_table(identifier)


def gap_events(table: Table) -> pa.Table:
    """Every GAP row of the quality-events table (a few per gap: small)."""
    equal_to: Any = EqualTo  # pyiceberg predicates are typed per field by the pydantic mypy plugin
    return table.scan(row_filter=equal_to("kind", EventKind.GAP.value)).to_arrow()
