"""SequenceTracker on hand-built id sequences: gap, duplicate, reorder, reset, restart, large ids."""

from __future__ import annotations

import numpy as np

from k2.quality.sequence import Gap, HoleState, SequenceTracker, StreamKey, gap_id, window_floor
from k2.schema.quality_event import EventKind

KEY = StreamKey("BINANCE", "BTCUSDT")


def observe(tracker: SequenceTracker, ids: list[int], now_us: int = 0):  # type: ignore[no-untyped-def]
    arr = np.array(ids, dtype=np.int64)
    return tracker.observe(KEY, arr, arr * 10, now_us)


def test_consecutive_ids_are_all_kept_without_events() -> None:
    tracker = SequenceTracker()
    obs = observe(tracker, [100, 101, 102])
    assert obs.keep.tolist() == [True, True, True] and obs.events == [] and obs.gaps_opened == []
    obs = observe(tracker, [103, 104])
    assert obs.keep.tolist() == [True, True]
    assert tracker.high(KEY) == 104 and tracker.holes(KEY) == []


def test_jump_opens_a_pending_gap_confirmed_after_grace() -> None:
    tracker = SequenceTracker(grace_us=1_000)
    observe(tracker, [1, 2])
    obs = observe(tracker, [6, 7], now_us=5_000)
    assert obs.keep.tolist() == [True, True] and obs.gaps_opened == [(3, 5)]
    assert tracker.holes(KEY) == [(3, 5, HoleState.PENDING)]
    assert tracker.due_gaps(5_999) == []
    assert tracker.due_gaps(6_000) == [Gap(KEY, 3, 5, 5_000, 60, gap_id(KEY, 5))]
    assert tracker.holes(KEY) == [(3, 5, HoleState.CONFIRMED)]
    assert tracker.due_gaps(10_000) == []  # confirmed once


def test_repeat_is_a_duplicate_and_dropped() -> None:
    tracker = SequenceTracker()
    observe(tracker, [10, 11, 12])
    obs = observe(tracker, [12, 13, 11, 13], now_us=7)
    assert obs.keep.tolist() == [False, True, False, False]
    assert obs.dropped == 3
    (event,) = obs.events
    assert (event.kind, event.first_id, event.last_id, event.count) == (EventKind.DUPLICATE, 11, 13, 3)
    assert (event.trade_time_us, event.detected_at_us) == (120, 7)


def test_reorder_within_grace_fills_the_gap_and_counts_out_of_order() -> None:
    tracker = SequenceTracker(grace_us=1_000)
    observe(tracker, [1])
    obs = observe(tracker, [3, 2, 4])
    assert obs.keep.tolist() == [True, True, True]
    assert [(e.kind, e.first_id, e.last_id, e.count) for e in obs.events] == [(EventKind.OUT_OF_ORDER, 2, 2, 1)]
    assert tracker.holes(KEY) == [] and tracker.due_gaps(10**9) == []
    # the same id again is now a duplicate
    assert observe(tracker, [2]).keep.tolist() == [False]


def test_late_arrival_splits_a_hole_and_the_gap_is_confirmed_as_one_span() -> None:
    tracker = SequenceTracker(grace_us=0)
    observe(tracker, [1, 10])
    observe(tracker, [5])
    assert tracker.holes(KEY) == [(2, 4, HoleState.PENDING), (6, 9, HoleState.PENDING)]
    (gap,) = tracker.due_gaps(1)
    assert (gap.first_id, gap.last_id, gap.gap_id) == (2, 9, gap_id(KEY, 9))
    # backfill returns the whole span: only the still-missing ids are kept
    keep = tracker.accept_backfill(KEY, list(range(2, 10)))
    assert keep.tolist() == [True, True, True, False, True, True, True, True]
    assert tracker.holes(KEY) == [] and tracker.missing_in(gap) == 0
    assert tracker.accept_backfill(KEY, [3]).tolist() == [False]  # second backfill of the same ids


def test_abandoned_gap_still_accepts_a_late_arrival() -> None:
    tracker = SequenceTracker(grace_us=0)
    observe(tracker, [1, 5])
    (gap,) = tracker.due_gaps(0)
    assert tracker.accept_backfill(KEY, [2]).tolist() == [True]
    assert tracker.abandon(gap) == 2
    assert tracker.holes(KEY) == [(3, 4, HoleState.ABANDONED)]
    assert tracker.due_gaps(10**9) == []
    assert observe(tracker, [4]).keep.tolist() == [True]


def test_one_id_far_below_is_held_and_dropped_once_the_old_numbering_goes_on() -> None:
    tracker = SequenceTracker(reset_threshold=1_000, reset_confirm=3)
    observe(tracker, [50_000, 50_001])
    later = np.full(3, 10**9, np.int64)  # trade times not older than the high's
    obs = tracker.observe(KEY, np.array([7, 50_000, 8], np.int64), later, 3)  # 7 and 8 are held
    assert obs.keep.tolist() == [False, False, False] and obs.held.tolist() == [True, False, True]
    assert tracker.high(KEY) == 50_001 and tracker.held(KEY) == 2
    obs = observe(tracker, [50_002], now_us=4)  # the old numbering goes on: not a reset
    assert obs.keep.tolist() == [True] and obs.dropped_held and not obs.released_held
    (event,) = obs.events
    assert (event.kind, event.first_id, event.last_id, event.count) == (EventKind.DUPLICATE, 7, 8, 2)
    assert "possible reset" in event.detail
    assert tracker.held(KEY) == 0 and tracker.holes(KEY) == []


def test_a_sustained_new_numbering_is_a_reset_and_its_held_ids_are_kept_once() -> None:
    tracker = SequenceTracker(reset_threshold=1_000, reset_confirm=4)
    observe(tracker, [50_000, 50_001])  # trade times 10x the id: 500_010
    later = 600_000
    first = tracker.observe(KEY, np.array([1, 2], np.int64), np.array([later, later + 1], np.int64), 5)
    assert first.held.tolist() == [True, True] and not first.keep.any()
    second = tracker.observe(KEY, np.array([2, 4, 5, 6], np.int64), np.arange(later + 2, later + 6), 6)
    # 2 again is a duplicate of a held id; 4 confirms (4 distinct ids: 1, 2, 4, 5 -> at 5); 6 follows
    assert second.keep.tolist() == [False, True, True, True] and not second.held.any()
    assert second.released_held and not second.dropped_held  # the caller writes its held 1 and 2 now
    kinds = [(e.kind, e.first_id, e.last_id) for e in second.events]
    assert (EventKind.RESET, 1, 50_001) in kinds and (EventKind.DUPLICATE, 2, 2) in kinds
    assert tracker.high(KEY) == 6 and tracker.holes(KEY) == [(3, 3, HoleState.PENDING)]
    assert observe(tracker, [1, 2, 3, 7]).keep.tolist() == [False, False, True, True]


def test_far_below_ids_older_than_the_high_are_a_replay_not_a_reset() -> None:
    tracker = SequenceTracker(reset_threshold=1_000, reset_confirm=2)
    observe(tracker, [50_000, 50_001])
    obs = observe(tracker, [7, 8, 9])  # trade times 70..90: older than the high's
    assert obs.keep.tolist() == [False, False, False] and not obs.held.any()
    assert [(e.kind, e.count) for e in obs.events] == [(EventKind.DUPLICATE, 3)]
    assert tracker.high(KEY) == 50_001


def test_another_far_off_run_drops_the_first_candidate() -> None:
    tracker = SequenceTracker(reset_threshold=1_000, reset_confirm=3)
    observe(tracker, [50_000])
    t = np.array([10**9, 10**9], np.int64)
    tracker.observe(KEY, np.array([7, 8], np.int64), t, 0)
    obs = tracker.observe(KEY, np.array([-5_000, -4_999], np.int64), t, 1)  # another run: 7, 8 are dropped
    assert obs.dropped_held and obs.held.tolist() == [True, True] and tracker.held(KEY) == 2
    assert tracker.high(KEY) == 50_000


def test_the_reset_policy_is_a_setting() -> None:
    """reset_confirm=1: one far-off id not older than the high re-bases; the default needs a run of 100."""
    eager = SequenceTracker(reset_threshold=1_000, reset_confirm=1)
    observe(eager, [50_000])
    obs = eager.observe(KEY, np.array([7], np.int64), np.array([10**9], np.int64), 0)
    assert obs.keep.tolist() == [True] and eager.high(KEY) == 7
    default = SequenceTracker(reset_threshold=1_000)
    observe(default, [50_000])
    ids = np.arange(1, 100, dtype=np.int64)
    assert default.observe(KEY, ids, np.full(99, 10**9), 0).held.all()
    assert default.observe(KEY, np.array([100], np.int64), np.array([10**9]), 0).keep.all()
    assert default.high(KEY) == 100


def test_seed_recovers_high_and_holes_from_stored_ids() -> None:
    tracker = SequenceTracker(grace_us=0)
    tracker.seed(KEY, [20, 21, 22, 25, 26], now_us=100)
    assert tracker.high(KEY) == 26
    assert tracker.holes(KEY) == [(23, 24, HoleState.PENDING)]
    obs = observe(tracker, [22, 27, 30], now_us=200)  # restart overlap: 22 is a duplicate
    assert obs.keep.tolist() == [False, True, True] and obs.gaps_opened == [(28, 29)]
    assert [(g.first_id, g.last_id) for g in tracker.due_gaps(200)] == [(23, 24), (28, 29)]


def test_seed_trusts_only_holes_above_holes_above() -> None:
    tracker = SequenceTracker(grace_us=0)
    tracker.seed(KEY, [41, 42, 50, 51, 60, 61, 70], now_us=0, holes_above=55)
    # 43..49 is at or below 55: treated as held; 52..59 is clipped to 56..59; 62..69 is trusted
    assert tracker.holes(KEY) == [(56, 59, HoleState.PENDING), (62, 69, HoleState.PENDING)]
    assert observe(tracker, [45]).keep.tolist() == [False]  # a replay of a held id is a duplicate


def test_window_floor_skips_rows_written_late_at_the_start_of_a_log_window() -> None:
    """A window of a log's newest messages: backfilled (not live) rows of an old gap, then the live
    stream. The ids between the backfill and the stream were written before the window."""
    ids = [41, 42, 43, 101, 102, 103, 110]
    live = [False, False, False, True, True, True, True]
    assert window_floor(ids, live) == 102  # 104..109 were never written; 44..100 are unknown
    # A late live row first (95 after 100 was written): the next new high is where the stream was.
    assert window_floor([95, 101, 102], [True, True, True]) == 101
    assert window_floor([41, 42], [False, False]) is None  # no live row: nothing is known
    assert window_floor([101, 100, 99], [True, True, True]) is None  # no new high after the first


def test_ids_past_digit_and_int32_boundaries_across_restarts() -> None:
    """Ids compared as integers: 99_999 < 100_000 (as text it would not be), and near 2**63."""
    tracker = SequenceTracker(grace_us=0)
    tracker.seed(KEY, np.array([99_998, 99_999, 100_000, 100_001], dtype=np.int64), now_us=0)
    assert tracker.high(KEY) == 100_001
    assert observe(tracker, [100_002]).keep.tolist() == [True]
    big = 2**63 - 10
    restarted = SequenceTracker(grace_us=0)
    restarted.seed(KEY, [2**31 - 1, 2**31, big], now_us=0)
    assert restarted.high(KEY) == big
    obs = observe(restarted, [big + 1, big + 3, big])
    assert obs.keep.tolist() == [True, True, False]
    assert [(g.first_id, g.last_id, g.count) for g in restarted.due_gaps(0)] == [
        (2**31 + 1, big - 1, big - 2**31 - 1),
        (big + 2, big + 2, 1),
    ]


def test_streams_are_tracked_independently() -> None:
    tracker = SequenceTracker()
    eth = StreamKey("BINANCE", "ETHUSDT")
    observe(tracker, [5, 6])
    tracker.observe(eth, np.array([5], dtype=np.int64), np.array([0], dtype=np.int64), 0)
    assert tracker.high(KEY) == 6 and tracker.high(eth) == 5
    assert set(tracker.streams()) == {KEY, eth}


def test_export_and_restore_keep_high_holes_and_gap_ids() -> None:
    tracker = SequenceTracker(grace_us=0)
    observe(tracker, [1, 10, 20])  # holes 2..9 and 11..19
    observe(tracker, [5])  # splits 2..9: both parts keep the gap id of 9
    state = tracker.export()[KEY]
    assert state.high == 20 and state.high_time_us == 200
    assert [(h.lo, h.hi, h.gap_id) for h in state.holes] == [
        (2, 4, gap_id(KEY, 9)),
        (6, 9, None),
        (11, 19, None),
    ]
    restarted = SequenceTracker(grace_us=0)
    restarted.restore(KEY, state, now_us=7)
    assert restarted.holes(KEY) == tracker.holes(KEY)
    assert [(g.first_id, g.last_id, g.gap_id) for g in restarted.due_gaps(7)] == [
        (2, 9, gap_id(KEY, 9)),
        (11, 19, gap_id(KEY, 19)),
    ]
    assert observe(restarted, [5, 20, 3, 21]).keep.tolist() == [False, False, True, True]
    assert restarted.missing(KEY, 1, 25) == 2 + 4 + 9 + 4 and restarted.missing(KEY, 20, 21) == 0


def test_reopen_turns_accepted_ids_into_confirmed_gaps_one_per_run() -> None:
    """Ids whose delivery failed after the tracker accepted them: each run of consecutive ids becomes
    a confirmed hole (a gap to backfill) with the id a restart would give it; ids not held (above
    the high-water mark, already missing) are left alone; backfill then fills exactly those."""
    key = StreamKey("BINANCE", "BTCUSDT")
    tracker = SequenceTracker(grace_us=1_000)
    ids = np.array([*range(100, 121), *range(125, 131)], dtype=np.int64)  # 121..124 missing: a pending hole
    tracker.observe(key, ids, ids * 10, now_us=0)
    failed = np.array([105, 106, 107, 110, 122, 129, 130, 131, 107], dtype=np.int64)
    gaps = tracker.reopen(key, failed, failed * 10, now_us=500)
    assert [(g.first_id, g.last_id, g.trade_time_us, g.detected_at_us) for g in gaps] == [
        (105, 107, 1_050, 500),
        (110, 110, 1_100, 500),
        (129, 130, 1_290, 500),
    ]
    assert [g.gap_id for g in gaps] == [gap_id(key, 107), gap_id(key, 110), gap_id(key, 130)]
    assert tracker.holes(key) == [
        (105, 107, HoleState.CONFIRMED),
        (110, 110, HoleState.CONFIRMED),
        (121, 124, HoleState.PENDING),
        (129, 130, HoleState.CONFIRMED),
    ]
    assert [(g.first_id, g.last_id) for g in tracker.due_gaps(2_000)] == [(121, 124)]  # reopened: not again
    keep = tracker.accept_backfill(key, np.arange(105, 111))
    assert keep.tolist() == [True, True, True, False, False, True]
    assert tracker.missing_in(gaps[0]) == tracker.missing_in(gaps[1]) == 0
    assert tracker.reopen(StreamKey("BINANCE", "ETHUSDT"), failed, failed, now_us=1) == []  # an unknown stream
    assert tracker.reopen(key, np.array([], dtype=np.int64), np.array([], dtype=np.int64), now_us=1) == []
