"""QuoteTracker: quote update ids only increase; repeats are dropped, late updates kept and flagged."""

from __future__ import annotations

import numpy as np

from k2.quality.quotes import QuoteTracker
from k2.quality.sequence import StreamKey
from k2.schema.quality_event import EventKind

KEY = StreamKey("BINANCE", "BTCUSDT", "bookTicker")


def _observe(tracker: QuoteTracker, ids: list[int], now_us: int = 0) -> tuple[list[bool], dict[EventKind, int]]:
    arr = np.array(ids, dtype=np.int64)
    obs = tracker.observe(KEY, arr, np.arange(arr.size, dtype=np.int64), now_us)
    return obs.keep.tolist(), {e.kind: e.count for e in obs.events}


def test_increasing_ids_are_all_kept_without_events() -> None:
    tracker = QuoteTracker()
    keep, events = _observe(tracker, [50093239212, 50093239219, 50093239230])
    assert keep == [True, True, True]
    assert events == {}
    assert tracker.high(KEY) == 50093239230


def test_a_repeated_update_is_dropped_and_counted() -> None:
    tracker = QuoteTracker()
    _observe(tracker, [10, 20, 30])
    keep, events = _observe(tracker, [30, 20, 40])
    assert keep == [False, False, True]
    assert events == {EventKind.DUPLICATE: 2}


def test_a_late_update_is_kept_and_flagged_once() -> None:
    tracker = QuoteTracker()
    keep, events = _observe(tracker, [10, 30, 20, 40])  # 20 arrives after 30: reordered, never seen
    assert keep == [True, True, True, True]
    assert events == {EventKind.OUT_OF_ORDER: 1}
    keep, events = _observe(tracker, [20])  # and then again: now a repeat
    assert keep == [False]
    assert events == {EventKind.DUPLICATE: 1}


def test_ids_older_than_the_window_are_dropped_as_stale() -> None:
    tracker = QuoteTracker(window=3)
    _observe(tracker, [10, 20, 30, 40, 50])  # 10 and 20 forgotten: anything up to 20 is too old
    keep, events = _observe(tracker, [15, 35])
    assert keep == [False, True]
    assert events == {EventKind.DUPLICATE: 1, EventKind.OUT_OF_ORDER: 1}


def test_restored_high_drops_everything_not_newer() -> None:
    tracker = QuoteTracker()
    tracker.restore(KEY, 100)
    keep, events = _observe(tracker, [99, 100, 101])
    assert keep == [False, False, True]
    assert events == {EventKind.DUPLICATE: 2}
    assert tracker.checkpoint() == {KEY: 101}


def test_streams_are_independent() -> None:
    tracker = QuoteTracker()
    other = StreamKey("BINANCE", "ETHUSDT", "bookTicker")
    _observe(tracker, [100])
    obs = tracker.observe(other, np.array([5], dtype=np.int64), np.zeros(1, dtype=np.int64), 0)
    assert obs.keep.tolist() == [True]
    assert tracker.checkpoint() == {KEY: 100, other: 5}
