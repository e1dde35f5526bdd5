"""A venue reset is recognised by evidence, not by one odd id: real frames through the parser and
:class:`~k2.feed.trades.Completeness`, with ids mutated to play an odd frame or a reset."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pytest

from k2.config import K2Settings
from k2.feed.stamp import parse_canonical
from k2.feed.trades import TradeCompleteness as Completeness
from k2.schema.kinds import RecordKind
from k2.schema.quality_event import EventKind
from k2.sources import RawFrame


def _with_id(frame: RawFrame, trade_id: int) -> RawFrame:
    """A real frame with its trade id replaced (fault injection, not market data)."""
    env = json.loads(frame.payload)
    env["data"]["t"] = trade_id
    return RawFrame(json.dumps(env).encode(), frame.received_at_us)


def _completeness() -> Completeness:
    return Completeness(K2Settings(), exchange="BINANCE", venue="binance", is_sample_data=True, now_us=0, seed={})


def _ingest(completeness: Completeness, frames: list[RawFrame]) -> list[tuple[str, int]]:
    parsed = parse_canonical("binance", frames, symbols=("BTCUSDT", "ETHUSDT"), first_sequence=1, is_sample_data=True)
    batch: pa.RecordBatch | None = parsed.records.get(RecordKind.TRADES)
    if batch is None:  # a parser that quarantines the odd id: nothing reaches the tracker
        return []
    out = completeness.ingest(batch, now_us=0)
    return list(zip(out.column("symbol").to_pylist(), out.column("source_sequence").to_pylist(), strict=True))


@pytest.mark.parametrize("odd_id", [7, -1])
def test_one_odd_frame_among_a_replay_writes_no_duplicate(bundled_frames: list[RawFrame], odd_id: int) -> None:
    """The issue's case: one frame whose id is far below the stream's, then 1,491 frames replayed.
    Taken as a reset, it wiped the dedup state and all 1,491 were written again."""
    completeness = _completeness()
    written = _ingest(completeness, bundled_frames[:3_000])
    odd = _with_id(bundled_frames[3_000], odd_id)
    reached = parse_canonical(
        "binance", [odd], symbols=("BTCUSDT", "ETHUSDT"), first_sequence=1, is_sample_data=True
    ).records.get(RecordKind.TRADES)
    written += _ingest(completeness, [odd])
    written += _ingest(completeness, bundled_frames[:1_491])  # a replay: all duplicates
    written += _ingest(completeness, bundled_frames[3_001:3_500])  # the stream goes on
    counts = Counter(written)
    assert max(counts.values()) == 1, "no trade id written twice"
    assert len(written) == 3_000 + 499 and all(i != odd_id for _, i in written)
    assert completeness.stats.resets == 0
    odd_rows = 0 if reached is None else reached.num_rows  # 1 unless the parser quarantines it
    assert completeness.stats.duplicates_dropped == 1_491 + odd_rows  # the replay, then the odd id once dropped


def test_a_sustained_new_numbering_is_recognised_and_each_row_written_once(bundled_frames: list[RawFrame]) -> None:
    """BTCUSDT's stream restarts its numbering at 1 (real frames, ids renumbered), fed in small
    batches: the first 99 are held, the 100th confirms the reset, and every row is written once."""
    btc = [f for f in bundled_frames if b"btcusdt@trade" in f.payload]
    completeness = _completeness()
    written = _ingest(completeness, btc[:1_000])
    renumbered = [_with_id(f, i) for i, f in enumerate(btc[1_000:1_300], 1)]
    after_reset: list[tuple[str, int]] = []
    for start in range(0, 300, 40):
        after_reset += _ingest(completeness, renumbered[start : start + 40])
        if start + 40 < 100:
            assert after_reset == [] and completeness.tracker.held(next(iter(completeness.tracker.streams()))) > 0
    assert sorted(after_reset) == [("BTCUSDT", i) for i in range(1, 301)]
    assert completeness.stats.resets == 1 and completeness.stats.duplicates_dropped == 0
    (reset,) = [e for e in completeness.take_events() if e.kind is EventKind.RESET]
    assert (reset.first_id, reset.last_id) == (1, written[-1][1])
    assert _ingest(completeness, renumbered) == []  # the new numbering is deduplicated like the old
    assert completeness.stats.duplicates_dropped == 300
