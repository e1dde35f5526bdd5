"""Gaps left OPEN by a previous run: found from the stored events, resolved when their ids are stored."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from k2.config import K2Settings
from k2.feed.trades import TradeCompleteness as Completeness
from k2.quality.records import QualityEventRow, events_batch, open_gaps
from k2.quality.sequence import Seed, StreamKey, gap_id
from k2.schema.quality_event import EventKind, EventStatus

KEY = StreamKey("BINANCE", "BTCUSDT")


def _gap(lo: int, hi: int, status: EventStatus, at_us: int) -> QualityEventRow:
    return QualityEventRow(
        gap_id(KEY, hi), "BINANCE", "BTCUSDT", "trade", EventKind.GAP, lo, hi, hi - lo + 1, 1_000, 500, status, at_us
    )


def _events(*rows: QualityEventRow) -> pa.Table:
    return pa.Table.from_batches([events_batch(list(rows))])


def test_only_gaps_whose_newest_row_is_open_are_returned() -> None:
    dup = QualityEventRow(
        "d", "BINANCE", "BTCUSDT", "trade", EventKind.DUPLICATE, 7, 7, 1, 0, 0, EventStatus.RECORDED, 0
    )
    events = _events(
        _gap(10, 19, EventStatus.OPEN, 100),
        _gap(10, 19, EventStatus.RESOLVED, 200),  # resolved later: not open
        _gap(30, 39, EventStatus.OPEN, 100),  # never resolved
        _gap(50, 59, EventStatus.OPEN, 300),
        _gap(50, 59, EventStatus.UNRECOVERABLE, 300),  # same instant: the final status wins
        _gap(65, 69, EventStatus.OPEN, 100),
        _gap(61, 69, EventStatus.OPEN, 400),  # re-found after a restart, its first part was filled: same id
        dup,
    )
    found = sorted(open_gaps(events), key=lambda g: g.first_id)
    assert [(g.first_id, g.last_id, g.gap_id) for g in found] == [
        (30, 39, gap_id(KEY, 39)),
        (61, 69, gap_id(KEY, 69)),
    ]
    assert found[0].detected_at_us == 500 and found[0].trade_time_us == 1_000


def test_open_gaps_whose_ids_are_all_stored_are_resolved_on_start() -> None:
    completeness = Completeness(
        K2Settings(), exchange="BINANCE", venue="binance", is_sample_data=True, now_us=0, seed={}
    )
    stored = np.array([*range(1, 40), *range(41, 60)], dtype=np.int64)  # 40 is missing
    seed = {"BTCUSDT": Seed(stored, stored * 10)}
    gaps = open_gaps(_events(_gap(30, 39, EventStatus.OPEN, 100), _gap(40, 45, EventStatus.OPEN, 100)))
    completeness.resolve_stored(gaps, seed, now_us=999)
    events = completeness.take_events()
    assert [(e.first_id, e.last_id, e.status, e.status_at_us) for e in events] == [
        (30, 39, EventStatus.RESOLVED, 999)  # 40..45 still misses 40: left for the tracker's holes
    ]
    assert events[0].event_id == gap_id(KEY, 39)
    assert completeness.stats.gaps_resolved == 1
