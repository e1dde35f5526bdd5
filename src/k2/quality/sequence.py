"""Sequence tracking per (exchange, symbol, stream): gaps, duplicates, reorders, resets. Pure logic.

Binance trade ids are consecutive per symbol, so the ids K2 holds for a stream are described
exactly by a *high-water mark* (the highest id seen) and a short list of *holes* below it (ids
never received). From that state each incoming id is classified in O(log holes):

========================  =====================================================  ===============
id ``x`` vs state          meaning                                                kept?
========================  =====================================================  ===============
``x == high + 1``          next in sequence                                       yes
``x > high + 1``           a gap ``[high + 1, x - 1]`` opens (pending)            yes
``x`` inside a hole        out-of-order: a late arrival fills (part of) a hole    yes
``x <= high``, no hole     duplicate                                              no (dropped)
``high - x > threshold``   a possible reset: held until evidence decides          held
========================  =====================================================  ===============

A *reset* (the venue restarted its numbering) is recognised only by evidence a venue can give,
never from one odd id: ids more than ``reset_threshold`` below the high-water mark whose trade
times are not older than the high's are *held* (neither kept nor dropped) as a candidate; once
``reset_confirm`` distinct ids of one dense run are held the reset is confirmed, the state is
re-based on the run and the held ids are released (kept, exactly once). If the old numbering goes
on first (a new high), or a far-off id starts another run, the candidate is dropped: its ids are
duplicates by the table above. An id far below whose trade time is older than the high's is an
old replay: a duplicate at once.

A gap stays *pending* for a grace period (a reordered frame may still fill it); :meth:`due_gaps`
(called with the current time) confirms the ones still open, and the caller backfills them.
Rows fetched by backfill go through :meth:`accept_backfill`, which keeps only ids still missing:
the same state deduplicates live delivery, reconnect overlap, replays and backfill. After a restart
:meth:`restore` puts back the state a commit recorded (:meth:`export`, encoded by
:mod:`k2.quality.state`), or :meth:`seed` rebuilds it from stored ids.
Ids accepted here whose trip to storage failed afterwards (a Kafka delivery that timed out) are
made holes again by :meth:`reopen`. Nothing here reads a clock.
"""

from __future__ import annotations

import bisect
import itertools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from k2.schema.quality_event import EventKind

_GAP_NAMESPACE = uuid.UUID("1d6f3c52-8d0e-5b6a-a7d4-5f3e0c2b9a61")

DEFAULT_RESET_THRESHOLD = 10_000_000
DEFAULT_RESET_CONFIRM = 100
DEFAULT_MAX_HOLES = 10_000


@dataclass(frozen=True, slots=True)
class StreamKey:
    exchange: str
    symbol: str
    stream: str = "trade"


class HoleState(StrEnum):
    PENDING = "pending"  # detected, inside the grace period
    CONFIRMED = "confirmed"  # handed to backfill
    ABANDONED = "abandoned"  # backfill gave up; a late arrival is still accepted


@dataclass(slots=True)
class _Hole:
    lo: int
    hi: int
    since_us: int
    trade_time_us: int
    gap_id: str
    state: HoleState = HoleState.PENDING


@dataclass(slots=True)
class _Candidate:
    """Ids far below the high-water mark held as a possible reset (see the module docstring)."""

    times: dict[int, int]  # id -> trade time (µs), in arrival order
    lo: int
    hi: int
    carried: bool = False  # holds ids of earlier observe() calls (the caller holds their rows)

    def near(self, x: int, window: int) -> bool:
        return self.lo - window <= x <= self.hi + window


@dataclass(slots=True)
class _State:
    high: int | None = None
    high_time_us: int | None = None  # trade time of the id that set ``high`` (None: not known)
    holes: list[_Hole] = field(default_factory=list)  # sorted by lo, disjoint, all below high
    candidate: _Candidate | None = None


@dataclass(frozen=True, slots=True)
class HoleRecord:
    """One hole of an exported state. ``gap_id`` only when it is not ``gap_id(key, hi)`` (a gap a
    late arrival split keeps the id of the whole gap)."""

    lo: int
    hi: int
    trade_time_us: int
    gap_id: str | None = None


@dataclass(frozen=True, slots=True)
class StreamState:
    """What :meth:`SequenceTracker.export` gives and :meth:`SequenceTracker.restore` takes for one
    stream: everything that decides how its next ids are classified. Candidates of a reset are
    not part of it (their rows are not stored either)."""

    high: int
    high_time_us: int | None
    holes: tuple[HoleRecord, ...] = ()


@dataclass(frozen=True)
class Seed:
    """Ids of one stream already stored, to rebuild its state on start (:meth:`SequenceTracker.seed`)."""

    ids: np.ndarray  # int64
    trade_times_us: np.ndarray  # int64, aligned with ``ids``
    holes_above: int | None = None  # absent ids at or below it are not known to be missing


@dataclass(frozen=True, slots=True)
class Gap:
    """A confirmed gap: ids ``first_id..last_id`` (inclusive) were not received."""

    key: StreamKey
    first_id: int
    last_id: int
    detected_at_us: int
    trade_time_us: int
    gap_id: str

    @property
    def count(self) -> int:
        return self.last_id - self.first_id + 1


@dataclass(frozen=True, slots=True)
class SequenceEvent:
    """Duplicates, reorders or a reset seen in one :meth:`SequenceTracker.observe` call."""

    key: StreamKey
    kind: EventKind
    first_id: int
    last_id: int
    count: int
    trade_time_us: int
    detected_at_us: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Observation:
    """The outcome of one :meth:`SequenceTracker.observe` call.

    ``keep`` is True for ids to write now. ``held`` marks ids held as a possible reset: the caller
    keeps their rows aside. When ``released_held`` is set, the rows the caller held from *earlier*
    calls for this stream are confirmed (write them now); when ``dropped_held`` is set, they are
    duplicates (drop them). At most one of the two is set.
    """

    keep: np.ndarray  # bool per input id
    events: list[SequenceEvent]
    gaps_opened: list[tuple[int, int]]  # pending gaps opened by this call (first, last)
    held: np.ndarray  # bool per input id
    released_held: bool = False
    dropped_held: bool = False

    @property
    def dropped(self) -> int:
        return int(self.keep.size - np.count_nonzero(self.keep | self.held))


def gap_id(key: StreamKey, last_id: int) -> str:
    """Deterministic id of a gap, so a gap found again after a restart keeps its identity: from its
    *last* id, because backfill fetches a gap in ascending pages, so a gap whose backfill was cut
    short (a crash, a REST failure) is found again as a hole ending at the same id."""
    return str(uuid.uuid5(_GAP_NAMESPACE, f"{key.exchange}:{key.symbol}:{key.stream}:{last_id}"))


def window_floor(ids: Sequence[int], live: Sequence[bool]) -> int | None:
    """For ids read from the *end* of a log (in log order), the id above which an absent id is
    known never to have been written; None when the ids do not say.

    Whatever was written before the window is unknown, and a window can begin with rows written
    late (backfilled trades, late arrivals) whose ids are far below what the stream had reached, so
    the gaps between the window's ids below the stream's position are not evidence. The first live
    id that is a new high after the window's first live row is where the stream was when the
    window began (two late rows in a row at the window's start aside): an id above it that is not
    in the window was never written.
    """
    high: int | None = None
    for x, is_live in zip(ids, live, strict=True):
        if not is_live:
            continue
        if high is None:
            high = x
        elif x > high:
            return x
    return None


class SequenceTracker:
    """Per-stream sequence state. Not thread-safe: one owner (the pipeline's processing task)."""

    def __init__(
        self,
        *,
        grace_us: int = 2_000_000,
        reset_threshold: int = DEFAULT_RESET_THRESHOLD,
        reset_confirm: int = DEFAULT_RESET_CONFIRM,
        max_holes: int = DEFAULT_MAX_HOLES,
    ) -> None:
        if reset_confirm < 1:
            raise ValueError("reset_confirm must be >= 1")
        self.grace_us = grace_us
        self.reset_threshold = reset_threshold
        self.reset_confirm = reset_confirm
        self.max_holes = max_holes
        self._states: dict[StreamKey, _State] = {}

    # --- state ----------------------------------------------------------------------------------
    def seed(
        self,
        key: StreamKey,
        ids: Iterable[int] | np.ndarray,
        now_us: int,
        trade_times_us: Iterable[int] | np.ndarray | None = None,
        *,
        holes_above: int | None = None,
    ) -> None:
        """Rebuild the state from ids already stored (e.g. the table's recent ids for this stream).

        The high-water mark is the largest id (compared as integers); holes between the smallest
        and the largest become pending gaps, so a restart also repairs holes left in the table.
        ``trade_times_us`` (aligned with ``ids``) dates each hole by the trade just after it.
        ``holes_above``: only ids above it are known to be missing when absent (see
        :func:`window_floor`); holes at or below it are treated as held, never re-fetched.
        """
        raw = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64)
        times = (
            np.zeros(raw.size, dtype=np.int64)
            if trade_times_us is None
            else np.asarray(
                trade_times_us if isinstance(trade_times_us, np.ndarray) else list(trade_times_us), dtype=np.int64
            )
        )
        arr, first = np.unique(raw, return_index=True)
        times = times[first]
        state = self._states[key] = _State()
        if arr.size == 0:
            return
        state.high = int(arr[-1])
        state.high_time_us = None if trade_times_us is None else int(times[-1])
        steps = np.flatnonzero(np.diff(arr) > 1)
        floor = None if holes_above is None else holes_above + 1
        for i in steps.tolist():
            lo, hi = int(arr[i]) + 1, int(arr[i + 1]) - 1
            if floor is not None:
                if hi < floor:
                    continue
                lo = max(lo, floor)
            state.holes.append(_Hole(lo, hi, now_us, int(times[i + 1]), gap_id(key, hi)))

    def export(self) -> dict[StreamKey, StreamState]:
        """The state of every stream that has one: what a commit records so that a restart
        (:meth:`restore`) classifies the next ids exactly as this tracker would."""
        out: dict[StreamKey, StreamState] = {}
        for key, state in self._states.items():
            if state.high is None:
                continue
            holes = tuple(
                HoleRecord(h.lo, h.hi, h.trade_time_us, None if h.gap_id == gap_id(key, h.hi) else h.gap_id)
                for h in state.holes
            )
            out[key] = StreamState(state.high, state.high_time_us, holes)
        return out

    def restore(self, key: StreamKey, saved: StreamState, now_us: int) -> None:
        """Put back an exported state. Every hole becomes pending again (detected at ``now_us``),
        so gaps that were pending, in backfill or abandoned when it was recorded are retried."""
        state = self._states[key] = _State(saved.high, saved.high_time_us)
        for h in sorted(saved.holes, key=lambda h: h.lo):
            state.holes.append(_Hole(h.lo, h.hi, now_us, h.trade_time_us, h.gap_id or gap_id(key, h.hi)))

    def adopt(self, gap: Gap, now_us: int) -> bool:
        """Hold again, as a pending hole with its own id, a gap recorded OPEN whose ids reach above
        this stream's restored high: the trades that revealed it were not stored before the process
        stopped (the event was). The high moves to the gap's last id; ids between the old high and
        the gap were received but not stored, and become a hole of their own. Without this the ids
        would be found again as a gap of another extent (another id), and the recorded one would
        stay OPEN for ever. False (nothing done) when the stream has no state, holds the gap's end,
        or the gap starts more than ``reset_threshold`` above the high (not this id sequence's
        continuation: e.g. a gap left from before a venue reset must not lift the high back up)."""
        state = self._states.get(gap.key)
        if state is None or state.high is None or gap.last_id <= state.high:
            return False
        if gap.first_id - state.high > self.reset_threshold:
            return False
        lo = max(gap.first_id, state.high + 1)
        if lo > state.high + 1:
            state.holes.append(_Hole(state.high + 1, lo - 1, now_us, gap.trade_time_us, gap_id(gap.key, lo - 1)))
        state.holes.append(_Hole(lo, gap.last_id, now_us, gap.trade_time_us, gap.gap_id))
        state.high = gap.last_id
        state.high_time_us = max(state.high_time_us or gap.trade_time_us, gap.trade_time_us)
        return True

    def high(self, key: StreamKey) -> int | None:
        state = self._states.get(key)
        return None if state is None else state.high

    def holes(self, key: StreamKey) -> list[tuple[int, int, HoleState]]:
        state = self._states.get(key)
        return [] if state is None else [(h.lo, h.hi, h.state) for h in state.holes]

    def missing(self, key: StreamKey, first_id: int, last_id: int) -> int | None:
        """Ids of ``first_id..last_id`` this stream does not hold (in a hole or above the high);
        None when the stream has no state."""
        state = self._states.get(key)
        if state is None or state.high is None:
            return None
        out = max(0, last_id - max(first_id, state.high + 1) + 1)
        for h in state.holes:
            out += max(0, min(h.hi, last_id) - max(h.lo, first_id) + 1)
        return out

    def streams(self) -> list[StreamKey]:
        return list(self._states)

    def held(self, key: StreamKey) -> int:
        """Ids held as a possible reset for ``key``."""
        state = self._states.get(key)
        return 0 if state is None or state.candidate is None else len(state.candidate.times)

    # --- live ids -------------------------------------------------------------------------------
    def observe(self, key: StreamKey, ids: np.ndarray, trade_times_us: np.ndarray, now_us: int) -> Observation:
        """Classify ``ids`` (in arrival order) and update the state; see :class:`Observation`."""
        state = self._states.setdefault(key, _State())
        n = int(ids.size)
        if n == 0:
            return Observation(np.zeros(0, dtype=bool), [], [], np.zeros(0, dtype=bool))
        first = int(ids[0])
        if (
            state.candidate is None
            and (state.high is None or first == state.high + 1)
            and (n == 1 or bool(np.all(np.diff(ids) == 1)))
        ):
            state.high = int(ids[-1])  # fast path: the common, perfectly consecutive batch
            state.high_time_us = int(trade_times_us[-1])
            return Observation(np.ones(n, dtype=bool), [], [], np.zeros(n, dtype=bool))
        return _Classifier(self, key, state, now_us, n).run(ids.tolist(), trade_times_us.tolist())

    def _take(self, state: _State, x: int) -> bool:
        """Remove ``x`` from the hole containing it; False when no hole contains it."""
        holes = state.holes
        i = bisect.bisect_right(holes, x, key=lambda h: h.lo) - 1
        if i < 0 or holes[i].hi < x:
            return False
        hole = holes[i]
        if hole.lo == hole.hi:
            del holes[i]
        elif x == hole.lo:
            hole.lo += 1
        elif x == hole.hi:
            hole.hi -= 1
        else:
            right = _Hole(x + 1, hole.hi, hole.since_us, hole.trade_time_us, hole.gap_id, hole.state)
            hole.hi = x - 1
            holes.insert(i + 1, right)
        return True

    # --- gaps and backfill ----------------------------------------------------------------------
    def due_gaps(self, now_us: int) -> list[Gap]:
        """Pending gaps older than the grace period, now confirmed (hand them to backfill).

        Parts of one detected gap that a late arrival split are confirmed together as one gap
        spanning them (backfill fetches the span; ids already held are dropped again).
        """
        out: list[Gap] = []
        for key, state in self._states.items():
            spans: dict[str, list[_Hole]] = {}
            for hole in state.holes:
                if hole.state is HoleState.PENDING and now_us - hole.since_us >= self.grace_us:
                    spans.setdefault(hole.gap_id, []).append(hole)
            for gid, parts in spans.items():
                for hole in parts:
                    hole.state = HoleState.CONFIRMED
                lo, hi = parts[0].lo, parts[-1].hi
                out.append(Gap(key, lo, hi, parts[0].since_us, parts[0].trade_time_us, gid))
        return out

    def reopen(
        self, key: StreamKey, ids: Sequence[int] | np.ndarray, trade_times_us: Sequence[int] | np.ndarray, now_us: int
    ) -> list[Gap]:
        """Ids this tracker accepted that never reached storage (their delivery failed: `k2 ingest`
        checks the topic first) become holes again, confirmed at once: one gap per run of
        consecutive ids (dated by its first trade), returned for the caller to record and backfill.

        Ids above the high-water mark or already in a hole are left alone: nothing to re-open. The
        gap id is the one a restart would give the same hole (:func:`gap_id`, from its last id).
        """
        state = self._states.get(key)
        if state is None or state.high is None:
            return []
        arr = np.asarray(ids, dtype=np.int64)
        times = np.asarray(trade_times_us, dtype=np.int64)
        arr, first = np.unique(arr, return_index=True)
        times = times[first]
        holes = state.holes
        held = np.fromiter(
            (x <= state.high and not self._in_hole(state, x) for x in arr.tolist()), dtype=bool, count=arr.size
        )
        arr, times = arr[held], times[held]
        gaps: list[Gap] = []
        if arr.size == 0:
            return gaps
        starts = np.flatnonzero(np.diff(arr, prepend=arr[:1] - 2) != 1)  # the first id of each consecutive run
        for start, end in zip(starts.tolist(), [*starts.tolist()[1:], arr.size], strict=True):
            lo, hi, t = int(arr[start]), int(arr[end - 1]), int(times[start])
            hole = _Hole(lo, hi, now_us, t, gap_id(key, hi), HoleState.CONFIRMED)
            holes.insert(bisect.bisect_right(holes, lo, key=lambda h: h.lo), hole)
            gaps.append(Gap(key, lo, hi, now_us, t, hole.gap_id))
        return gaps

    @staticmethod
    def _in_hole(state: _State, x: int) -> bool:
        i = bisect.bisect_right(state.holes, x, key=lambda h: h.lo) - 1
        return i >= 0 and state.holes[i].hi >= x

    def accept_backfill(self, key: StreamKey, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Keep-mask for ids fetched by backfill: True only for ids still missing (and now taken)."""
        state = self._states.setdefault(key, _State())
        return np.fromiter((self._take(state, int(x)) for x in ids), dtype=bool, count=len(ids))

    def abandon(self, gap: Gap) -> int:
        """Backfill gave up on ``gap``: its remaining holes stop being retried. Returns ids still missing."""
        return self._set_state(gap, HoleState.ABANDONED)

    def resume(self, gap: Gap) -> int:
        """Backfill tries ``gap`` again (a later retry of an abandoned gap). Returns ids still missing."""
        return self._set_state(gap, HoleState.CONFIRMED)

    def _set_state(self, gap: Gap, to: HoleState) -> int:
        state = self._states.get(gap.key)
        missing = 0
        for hole in state.holes if state else []:
            if hole.gap_id == gap.gap_id:
                hole.state = to
                missing += hole.hi - hole.lo + 1
        return missing

    def missing_in(self, gap: Gap) -> int:
        """Ids of ``gap`` still missing."""
        state = self._states.get(gap.key)
        return sum(h.hi - h.lo + 1 for h in (state.holes if state else []) if h.gap_id == gap.gap_id)


class _Classifier:
    """One :meth:`SequenceTracker.observe` call on the slow path (ids not simply consecutive)."""

    def __init__(self, tracker: SequenceTracker, key: StreamKey, state: _State, now_us: int, n: int) -> None:
        self.tracker = tracker
        self.key = key
        self.state = state
        self.now_us = now_us
        self.keep = np.ones(n, dtype=bool)
        self.held = np.zeros(n, dtype=bool)
        self.dups: list[tuple[int, int]] = []
        self.late: list[tuple[int, int]] = []
        self.events: list[SequenceEvent] = []
        self.opened: list[tuple[int, int]] = []
        self.held_here: list[int] = []  # indexes of this call's ids in the current candidate
        self.released = self.dropped = False
        if state.candidate is not None:
            state.candidate.carried = True

    def run(self, ids: list[int], times: list[int]) -> Observation:
        state, tracker = self.state, self.tracker
        for i, (x, t) in enumerate(zip(ids, times, strict=True)):
            high = state.high
            if high is None or x > high:
                if state.candidate is not None:
                    self._drop_candidate("the old numbering went on")
                if high is not None and x > high + 1:
                    state.holes.append(_Hole(high + 1, x - 1, self.now_us, t, gap_id(self.key, x - 1)))
                    self.opened.append((high + 1, x - 1))
                state.high, state.high_time_us = x, t
            elif tracker._take(state, x):
                self.late.append((x, t))
            elif high - x > tracker.reset_threshold and (state.high_time_us is None or t >= state.high_time_us):
                self._hold(i, x, t)
            else:
                self.keep[i] = False
                self.dups.append((x, t))
        if len(state.holes) > tracker.max_holes:
            del state.holes[: len(state.holes) - tracker.max_holes]  # the oldest are forgotten (seen)
        for kind, items in ((EventKind.DUPLICATE, self.dups), (EventKind.OUT_OF_ORDER, self.late)):
            if items:
                xs = [x for x, _ in items]
                self.events.append(
                    SequenceEvent(self.key, kind, min(xs), max(xs), len(items), items[0][1], self.now_us)
                )
        return Observation(self.keep, self.events, self.opened, self.held, self.released, self.dropped)

    def _hold(self, i: int, x: int, t: int) -> None:
        """``x`` is far below the high and not older than it: a possible reset."""
        cand = self.state.candidate
        if cand is not None and x in cand.times:
            self.keep[i] = False
            self.dups.append((x, t))
            return
        if cand is not None and not cand.near(x, self.tracker.reset_confirm):
            self._drop_candidate("another run of far-off ids began")
            cand = None
        if cand is None:
            cand = self.state.candidate = _Candidate({}, x, x)
        cand.times[x] = t
        cand.lo, cand.hi = min(cand.lo, x), max(cand.hi, x)
        self.keep[i] = False
        self.held[i] = True
        self.held_here.append(i)
        if len(cand.times) >= self.tracker.reset_confirm:
            self._confirm(cand)

    def _confirm(self, cand: _Candidate) -> None:
        """Enough evidence: the venue restarted its numbering. Re-base on the candidate's run."""
        state, key = self.state, self.key
        old_high = state.high
        assert old_high is not None
        first_time = next(iter(cand.times.values()))
        self.events.append(SequenceEvent(key, EventKind.RESET, cand.lo, old_high, 1, first_time, self.now_us))
        ordered = sorted(cand.times)
        state.high, state.high_time_us = cand.hi, cand.times[cand.hi]
        state.holes = [
            _Hole(a + 1, b - 1, self.now_us, cand.times[b], gap_id(key, b - 1))
            for a, b in itertools.pairwise(ordered)
            if b > a + 1
        ]
        state.candidate = None
        self.keep[self.held_here] = True
        self.held[self.held_here] = False
        self.held_here = []
        self.released = self.released or cand.carried

    def _drop_candidate(self, why: str) -> None:
        """The candidate was not a reset: its ids are duplicates (they are below the high, in no hole)."""
        cand = self.state.candidate
        assert cand is not None
        self.state.candidate = None
        first_time = next(iter(cand.times.values()))
        self.events.append(
            SequenceEvent(
                self.key, EventKind.DUPLICATE, cand.lo, cand.hi, len(cand.times), first_time, self.now_us,
                f"held as a possible reset, dropped: {why}",
            )
        )  # fmt: skip
        self.held[self.held_here] = False
        self.held_here = []
        self.dropped = self.dropped or cand.carried
