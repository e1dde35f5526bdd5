"""The venue-adapter contract: pure parsers from raw frames to canonical Arrow batches.

An adapter knows one venue's wire protocol: how to build the WebSocket URL (and any subscribe
messages) for a set of symbols and data types, and how to turn a batch of raw frames into canonical
records. It never touches sockets, files, the clock or the environment: the receive time comes in
with each frame. The pipeline only sees :class:`ParsedBatch`, keyed by :class:`DataType`, so quotes
or another venue plug in without touching it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import pyarrow as pa


class DataType(StrEnum):
    TRADES = "trades"


class RejectReason(StrEnum):
    """Why a frame was rejected (a small fixed set: it is a metric label)."""

    MALFORMED_JSON = "malformed_json"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    INVALID_NUMBER = "invalid_number"
    NON_POSITIVE = "non_positive"
    UNKNOWN_EVENT = "unknown_event"


@dataclass(frozen=True, slots=True)
class RawFrame:
    """One frame as received: its bytes and the UTC receive time in microseconds."""

    payload: bytes
    received_at_us: int


@dataclass(frozen=True, slots=True)
class Rejected:
    frame: RawFrame
    reason: RejectReason
    detail: str


@dataclass
class ParsedBatch:
    """What a batch of frames parsed to: canonical record batches per data type, and the rejects."""

    records: dict[DataType, pa.RecordBatch] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    control: int = 0  # frames that carried no data (subscription acks and the like)

    def rows(self, data_type: DataType) -> int:
        batch = self.records.get(data_type)
        return 0 if batch is None else batch.num_rows


class VenueAdapter(Protocol):
    """One venue's protocol knowledge. Implementations are pure."""

    venue: str  # lower-case registry name, e.g. "binance"
    exchange: str  # canonical exchange column value, e.g. "BINANCE"

    def stream_urls(self, base_url: str, symbols: Sequence[str], data_types: Sequence[DataType]) -> list[str]:
        """WebSocket URLs to open (several when the venue limits streams per connection)."""
        ...

    def subscribe_messages(self, symbols: Sequence[str], data_types: Sequence[DataType]) -> list[str]:
        """Messages to send right after connecting (empty when the URL already subscribes)."""
        ...

    def parse(self, frames: Sequence[RawFrame], *, first_platform_sequence: int, is_sample_data: bool) -> ParsedBatch:
        """Parse frames to canonical records. ``platform_sequence`` numbers rows from the given start."""
        ...
