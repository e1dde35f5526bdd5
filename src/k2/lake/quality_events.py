"""The Iceberg table of quality events (gaps, duplicates, reorders, anomalies), from the canonical schema.

Small and append-only: partitioned by ``day(detected_at)``, sorted by symbol. Gap status changes
are new rows with the same ``event_id`` (see :mod:`k2.schema.quality_event`).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pyiceberg.expressions import EqualTo
from pyiceberg.table import Table

from k2.schema.quality_event import EventKind


def gap_events(table: Table) -> pa.Table:
    """Every GAP row of the quality-events table (a few per gap: small)."""
    equal_to: Any = EqualTo  # pyiceberg predicates are typed per field by the pydantic mypy plugin
    return table.scan(row_filter=equal_to("kind", EventKind.GAP.value)).to_arrow()
