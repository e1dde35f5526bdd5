"""Update-id tracking for quotes (best bid/offer): duplicates dropped, late updates flagged. Pure logic.

A venue's quote update ids only increase (Binance ``bookTicker`` ``u`` is the order book's update id:
increasing, not consecutive, so a missing id proves nothing and there is no gap to backfill; nor
does the venue serve old quotes over REST). Per (exchange, symbol, stream) the tracker keeps the
highest id seen and the last ``window`` ids below it:

=============================  =========================================  ===========================
id ``x`` vs state              meaning                                    kept?
=============================  =========================================  ===========================
``x > high``                   a new update                               yes
``x`` among the recent ids     the same update again (reconnect, replay)  no: DUPLICATE
``x < high``, not seen, inside a late update (the venue or the network     yes: OUT_OF_ORDER
the remembered window          reordered it)
``x`` below the window         too late to tell a repeat from a late one  no: DUPLICATE (stale)
=============================  =========================================  ===========================

After a restart only ``high`` is known (:meth:`QuoteTracker.checkpoint` / :meth:`restore`): an update
not newer than the last one committed is dropped as a repeat. Nothing here reads a clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from k2.quality.sequence import SequenceEvent, StreamKey
from k2.schema.quality_event import EventKind

DEFAULT_WINDOW = 10_000


@dataclass(frozen=True, slots=True)
class QuoteObservation:
    keep: np.ndarray  # bool per input id: False for repeats
    events: list[SequenceEvent]


@dataclass
class _State:
    high: int | None = None
    recent: deque[int] = field(default_factory=deque)  # ids seen, oldest first (not sorted: late ones too)
    members: set[int] = field(default_factory=set)
    floor: int | None = None  # ids below this are too old to classify: dropped as repeats


class QuoteTracker:
    """Per-stream update-id state for quotes. Not thread-safe: one owner (the feed's intake)."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self._states: dict[StreamKey, _State] = {}

    def high(self, key: StreamKey) -> int | None:
        state = self._states.get(key)
        return None if state is None else state.high

    def checkpoint(self) -> dict[StreamKey, int]:
        """The highest id of every stream (what a commit records; enough to drop repeats after a restart)."""
        return {key: s.high for key, s in self._states.items() if s.high is not None}

    def restore(self, key: StreamKey, high: int) -> None:
        """Start ``key`` from a committed high-water mark: anything not above it is a repeat."""
        self._states[key] = _State(high=high, floor=high + 1)

    def observe(self, key: StreamKey, ids: np.ndarray, times_us: np.ndarray, now_us: int) -> QuoteObservation:
        """Classify ``ids`` (arrival order); ``keep`` drops repeats. ``times_us`` date the events."""
        state = self._states.setdefault(key, _State())
        n = int(ids.size)
        if n == 0:
            return QuoteObservation(np.zeros(0, dtype=bool), [])
        if (state.high is None or int(ids[0]) > state.high) and (n == 1 or bool(np.all(np.diff(ids) > 0))):
            self._remember(state, ids.tolist())  # fast path: every id new and increasing
            state.high = int(ids[-1])
            return QuoteObservation(np.ones(n, dtype=bool), [])
        keep = np.ones(n, dtype=bool)
        repeats: list[tuple[int, int]] = []
        late: list[tuple[int, int]] = []
        for i, (x, t) in enumerate(zip(ids.tolist(), times_us.tolist(), strict=True)):
            if state.high is None or x > state.high:
                state.high = x
                self._remember(state, [x])
            elif x in state.members or (state.floor is not None and x < state.floor):
                keep[i] = False
                repeats.append((x, t))
            else:
                late.append((x, t))
                self._remember(state, [x])
        events: list[SequenceEvent] = []
        for kind, items in ((EventKind.DUPLICATE, repeats), (EventKind.OUT_OF_ORDER, late)):
            if items:
                xs = [x for x, _ in items]
                events.append(SequenceEvent(key, kind, min(xs), max(xs), len(items), items[0][1], now_us))
        return QuoteObservation(keep, events)

    def _remember(self, state: _State, ids: list[int]) -> None:
        """Remember ``ids``; past ``window`` ids the oldest are forgotten, and ids up to the largest
        forgotten one can no longer be told apart (the floor rises above it)."""
        state.recent.extend(ids)
        state.members.update(ids)
        while len(state.recent) > self.window:
            gone = state.recent.popleft()
            state.members.discard(gone)
            if state.floor is None or gone >= state.floor:
                state.floor = gone + 1
