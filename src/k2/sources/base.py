"""The venue-adapter contract: pure parsers from raw frames to canonical Arrow batches.

An adapter is built for one subscription (symbols x data types) and knows one venue's wire protocol:
the WebSocket URLs (and any subscribe messages) for that subscription, and how to turn a batch of raw
frames into canonical records. Knowing the subscription lets it quarantine a frame of any other
stream instead of storing it. It never touches sockets, files, the clock or the environment: the
receive time comes in with each frame. The pipeline only sees :class:`ParsedBatch`, keyed by
:class:`DataType`, so quotes or another venue plug in without touching it.
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
    """Why a frame was rejected (a small fixed set: it is a metric label). See docs/sources.md."""

    MALFORMED_JSON = "malformed_json"  # not JSON
    MISSING_FIELD = "missing_field"  # a required field is absent
    WRONG_TYPE = "wrong_type"  # a field (or the frame, or `data`) has the wrong JSON type
    INVALID_NUMBER = "invalid_number"  # price/quantity text that decimal(38,12) cannot hold exactly
    NON_POSITIVE = "non_positive"  # price or quantity <= 0 (also counted as a quality anomaly)
    OUT_OF_RANGE = "out_of_range"  # an id or time no venue sends (beyond int64, below the first id, outside the window)
    UNKNOWN_EVENT = "unknown_event"  # an event type the adapter does not parse
    UNSUBSCRIBED = "unsubscribed"  # a stream or symbol outside the adapter's subscription


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
    """One venue's protocol knowledge, for one subscription. Implementations are pure.

    Built with the symbols and data types it subscribes to (``load_adapter(venue, symbols, ...)``);
    ``stream_urls`` and ``subscribe_messages`` ask for exactly those, and ``parse`` quarantines any
    frame outside them (:attr:`RejectReason.UNSUBSCRIBED`).
    """

    venue: str  # lower-case registry name, e.g. "binance"
    exchange: str  # canonical exchange column value, e.g. "BINANCE"
    symbols: tuple[str, ...]  # the subscription: venue symbols, upper case ...
    data_types: tuple[DataType, ...]  # ... times these data types

    def stream_urls(self, base_url: str) -> list[str]:
        """WebSocket URLs to open (several when the venue limits streams per connection)."""
        ...

    def subscribe_messages(self) -> list[str]:
        """Messages to send right after connecting (empty when the URL already subscribes)."""
        ...

    def parse(self, frames: Sequence[RawFrame], *, first_platform_sequence: int, is_sample_data: bool) -> ParsedBatch:
        """Parse frames to canonical records; every frame ends up as a row, a reject or control.

        ``platform_sequence`` numbers rows from the given start. ``is_sample_data``: the frames are a
        replayed recording, whose venue times are old by design (no maximum age is applied).
        """
        ...
