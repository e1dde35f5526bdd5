"""Data-quality checks at ingest. Pure: values and times come in as arguments.

Each check returns :class:`Anomaly` items aggregated per symbol (first/last trade id, count), so a
burst of bad prints is one record. The non-positive price/quantity check is the parser's
(``RejectReason.NON_POSITIVE``): the pipeline counts those rejects as ``NON_POSITIVE`` anomalies.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.schema.quality_event import EventKind


@dataclass(frozen=True, slots=True)
class Anomaly:
    kind: EventKind
    symbol: str
    first_id: int
    last_id: int
    count: int
    trade_time_us: int
    detail: str


def _aggregate(kind: EventKind, symbol: str, hits: list[tuple[int, int]], detail: str) -> list[Anomaly]:
    if not hits:
        return []
    ids = [i for i, _ in hits]
    return [Anomaly(kind, symbol, min(ids), max(ids), len(hits), hits[0][1], detail)]


@dataclass
class PriceJumpCheck:
    """Flags a price more than ``max_fraction`` away from the median of the last ``window`` prices.

    A median is robust: one bad print is flagged without dragging the reference, and a genuine
    level shift becomes the reference after ``window // 2`` trades.
    """

    max_fraction: Decimal = Decimal("0.05")
    window: int = 50
    _recent: dict[str, deque[Decimal]] = field(default_factory=dict)
    _sorted: dict[str, list[Decimal]] = field(default_factory=dict)

    def check(
        self,
        symbol: str,
        ids: Sequence[int],
        prices: Sequence[Decimal] | pa.Array,
        trade_times_us: Sequence[int],
    ) -> list[Anomaly]:
        """Anomalies among ``prices`` (in arrival order); a decimal Arrow array takes a fast path."""
        recent = self._recent.setdefault(symbol, deque())
        ordered = self._sorted.setdefault(symbol, [])
        if isinstance(prices, pa.Array):
            if len(prices) and self._quiet(ordered, prices):
                # Every reference and every price lies in [lo, hi], and (hi - lo) / lo <= max_fraction:
                # no price can deviate more. Only the window needs updating.
                for price in prices.slice(max(0, len(prices) - self.window)).to_pylist():
                    self._push(recent, ordered, price)
                return []
            prices = prices.to_pylist()
        hits: list[tuple[int, int]] = []
        worst = Decimal(0)
        for trade_id, price, t in zip(ids, prices, trade_times_us, strict=True):
            if ordered:
                mid = len(ordered) // 2
                ref = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
                deviation = abs(price - ref) / ref
                if deviation > self.max_fraction:
                    hits.append((trade_id, t))
                    worst = max(worst, deviation)
            self._push(recent, ordered, price)
        detail = f"max deviation {worst:.6f} > {self.max_fraction} of the rolling median"
        return _aggregate(EventKind.PRICE_JUMP, symbol, hits, detail)

    def _push(self, recent: deque[Decimal], ordered: list[Decimal], price: Decimal) -> None:
        recent.append(price)
        bisect.insort(ordered, price)
        if len(recent) > self.window:
            ordered.pop(bisect.bisect_left(ordered, recent.popleft()))

    def _quiet(self, ordered: list[Decimal], prices: pa.Array) -> bool:
        bounds = pc.min_max(prices).as_py()
        lo, hi = bounds["min"], bounds["max"]
        if ordered:
            lo, hi = min(lo, ordered[0]), max(hi, ordered[-1])
        return bool(lo > 0 and (hi - lo) / lo <= self.max_fraction)


def timestamp_anomalies(
    symbol: str,
    ids: np.ndarray,
    trade_times_us: np.ndarray,
    received_us: np.ndarray,
    *,
    max_future_us: int,
    max_lag_us: int,
) -> list[Anomaly]:
    """Exchange time ahead of receive time by more than ``max_future_us`` (clock skew, bad data),
    or behind it by more than ``max_lag_us`` (a slow feed)."""
    out: list[Anomaly] = []
    ahead = trade_times_us - received_us
    for kind, mask, limit in (
        (EventKind.TIMESTAMP_FUTURE, ahead > max_future_us, max_future_us),
        (EventKind.TIMESTAMP_LAG, -ahead > max_lag_us, max_lag_us),
    ):
        idx = np.flatnonzero(mask)
        if idx.size:
            hits = list(zip(ids[idx].tolist(), trade_times_us[idx].tolist(), strict=True))
            worst = int(np.abs(ahead[idx]).max())
            out += _aggregate(kind, symbol, hits, f"worst {worst} us (limit {limit} us)")
    return out


@dataclass
class StaleFeedCheck:
    """A symbol is stale when it had messages and then none for ``max_silence_us``.

    ``seen`` records the newest receive time per symbol; ``check(now_us)`` returns the symbols
    that just became stale (once per silence: a new message re-arms it).
    """

    max_silence_us: int
    _last: dict[str, int] = field(default_factory=dict)
    _reported: set[str] = field(default_factory=set)

    def seen(self, symbol: str, received_us: int) -> None:
        if received_us > self._last.get(symbol, -1):
            self._last[symbol] = received_us
        self._reported.discard(symbol)

    def check(self, now_us: int) -> list[tuple[str, int]]:
        """(symbol, silent for µs) for each symbol that became stale since the last call."""
        out = []
        for symbol, last in self._last.items():
            silence = now_us - last
            if silence >= self.max_silence_us and symbol not in self._reported:
                self._reported.add(symbol)
                out.append((symbol, silence))
        return out


def crossed_quotes(symbol: str, bids: Sequence[Decimal], asks: Sequence[Decimal]) -> int:
    """Hook for when quotes exist: the number of quotes with bid >= ask (none are ingested yet)."""
    return sum(1 for bid, ask in zip(bids, asks, strict=True) if bid >= ask)
