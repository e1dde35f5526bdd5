"""The tracker's state as text, for an Iceberg snapshot summary. Pure.

The embedded pipeline records :meth:`SequenceTracker.export() <k2.quality.sequence.SequenceTracker.export>`
in the summary of every trades commit, under :func:`state_property` (one key per exchange), so the
state a restart recovers is exactly the state of the rows committed with it (docs/quality.md). The
text is compact JSON, one entry per stream::

    {"v": 1, "streams": [["BTCUSDT", "trade", high, high_time_us, [[lo, hi, trade_time_us], ...]], ...]}

A hole carries a fourth element, its gap id, only when that is not derived from its own last id
(a gap that a late arrival split). ``high_time_us`` may be null. Every stream the tracker knows is
written in every commit, so a symbol that stays quiet for days keeps its state. At most
``max_holes`` holes per stream are written (the newest: the oldest are treated as held, as the
tracker itself does beyond its own cap).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from k2.quality.sequence import HoleRecord, StreamKey, StreamState

VERSION = 1
PROPERTY_PREFIX = "k2.sequence-state."


class StateFormatError(ValueError):
    """Recorded state that cannot be read (a newer format, or corrupt text)."""


def state_property(exchange: str) -> str:
    """The snapshot-summary key holding ``exchange``'s tracker state."""
    return PROPERTY_PREFIX + exchange.lower()


def encode_state(states: Mapping[StreamKey, StreamState], *, max_holes: int) -> str:
    """``states`` (one exchange's streams) as compact JSON."""
    streams: list[list[Any]] = []
    for key in sorted(states, key=lambda k: (k.symbol, k.stream)):
        s = states[key]
        kept = s.holes[-max_holes:] if max_holes > 0 else ()
        holes = [[h.lo, h.hi, h.trade_time_us] + ([] if h.gap_id is None else [h.gap_id]) for h in kept]
        streams.append([key.symbol, key.stream, s.high, s.high_time_us, holes])
    return json.dumps({"v": VERSION, "streams": streams}, separators=(",", ":"))


def decode_state(text: str, exchange: str) -> dict[StreamKey, StreamState]:
    """The streams recorded in ``text`` (from :func:`encode_state`), keyed for ``exchange``."""
    try:
        doc = json.loads(text)
        if doc.get("v") != VERSION:
            raise StateFormatError(f"sequence state version {doc.get('v')!r}, this K2 reads {VERSION}")
        out: dict[StreamKey, StreamState] = {}
        for symbol, stream, high, high_time, holes in doc["streams"]:
            records = tuple(
                HoleRecord(int(h[0]), int(h[1]), int(h[2]), str(h[3]) if len(h) > 3 else None) for h in holes
            )
            if any(h.lo > h.hi or h.hi >= int(high) for h in records):
                raise StateFormatError(f"sequence state of {symbol}: a hole outside 0..{high}")
            key = StreamKey(exchange, str(symbol), str(stream))
            out[key] = StreamState(int(high), None if high_time is None else int(high_time), records)
        return out
    except StateFormatError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise StateFormatError(f"unreadable sequence state: {exc}") from exc
