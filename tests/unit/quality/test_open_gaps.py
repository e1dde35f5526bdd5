"""Gaps left OPEN by a previous run: found from the stored events, resolved when their ids are stored."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from k2.config import K2Settings
from k2.feed.trades import TradeCompleteness as Completeness
from k2.quality.records import QualityEventRow, events_batch, open_gaps
from k2.quality.sequence import HoleRecord, Seed, StreamKey, StreamState, gap_id
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


def test_open_gaps_above_the_restored_high_are_held_again_with_their_own_ids() -> None:
    """Killed after a gap's OPEN event was stored and before the trades that revealed it were: the
    restored state ends below the gap. The gap becomes a hole again under its recorded id (so its
    backfill resolves *that* event), and ids between the stored high and the gap, received but not
    stored, are a hole too. Before, the ids were found again as a gap of another extent and the
    recorded one stayed OPEN for ever (seen in tests/integration/test_chaos.py under load)."""
    state = {KEY: StreamState(high=100, high_time_us=1_000, holes=(HoleRecord(50, 59, 900),))}
    completeness = Completeness(
        K2Settings(), exchange="BINANCE", venue="binance", is_sample_data=True, now_us=0, state=state
    )
    gaps = open_gaps(
        _events(
            _gap(50, 59, EventStatus.OPEN, 100),  # held by the restored state already
            _gap(160, 170, EventStatus.OPEN, 300),
            _gap(101, 150, EventStatus.OPEN, 200),
        )
    )
    completeness.resolve_stored(gaps, None, now_us=999)

    tracker = completeness.tracker
    assert tracker.high(KEY) == 170
    assert [(lo, hi) for lo, hi, _ in tracker.holes(KEY)] == [(50, 59), (101, 150), (151, 159), (160, 170)]
    assert tracker.export()[KEY].holes[1:] == (
        HoleRecord(101, 150, 1_000),
        HoleRecord(151, 159, 1_000),
        HoleRecord(160, 170, 1_000),
    )  # ids derived from each hole's last id: the recorded events' ids
    assert completeness.take_events() == []  # nothing resolved: the ids are still missing
    assert tracker.missing(KEY, 101, 170) == 70


def test_with_a_seed_of_stored_ids_an_open_gap_above_them_is_held_again_too() -> None:
    """The same for `k2 ingest`, whose state is seeded from the ids in its topic."""
    completeness = Completeness(
        K2Settings(), exchange="BINANCE", venue="binance", is_sample_data=True, now_us=0, seed={}
    )
    stored = np.arange(1, 101, dtype=np.int64)
    seed = {"BTCUSDT": Seed(stored, stored * 10)}
    completeness.tracker.seed(KEY, stored, 0, stored * 10)
    completeness.resolve_stored(open_gaps(_events(_gap(101, 150, EventStatus.OPEN, 200))), seed, now_us=999)
    assert completeness.tracker.high(KEY) == 150
    assert completeness.tracker.export()[KEY].holes == (HoleRecord(101, 150, 1_000),)
    assert completeness.take_events() == []


def test_an_open_gap_far_above_the_restored_high_is_not_adopted() -> None:
    """A gap starting more than the reset threshold above the stored high is not this sequence's
    continuation (a gap left from before a venue reset, or a broken row): it must not lift the high."""
    settings = K2Settings()
    far = 100 + settings.quality.reset_threshold + 1
    state = {KEY: StreamState(high=100, high_time_us=1_000)}
    completeness = Completeness(
        settings, exchange="BINANCE", venue="binance", is_sample_data=True, now_us=0, state=state
    )
    completeness.resolve_stored(open_gaps(_events(_gap(far, far + 9, EventStatus.OPEN, 200))), None, now_us=999)
    assert completeness.tracker.high(KEY) == 100
    assert completeness.tracker.holes(KEY) == []
