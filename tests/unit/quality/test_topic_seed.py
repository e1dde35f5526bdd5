"""`k2 ingest`'s seed from its topic's newest messages: trust only holes the log order proves."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from k2.bus.tail import Tail
from k2.feed.trades import topic_seed, unplaced


def _tail(rows: list[tuple[str, int, bool]], *, partition: int = 0, whole: bool = False, partitions: int = 1) -> Tail:
    """``rows``: (symbol, trade id, backfilled) in log order."""
    vendor = [[("backfilled", "true")] if b else [("event_type", "trade")] for _, _, b in rows]
    table = pa.table(
        {
            "symbol": [s for s, _, _ in rows],
            "source_sequence": pa.array([i for _, i, _ in rows], pa.int64()),
            "timestamp": pa.array([i * 1_000 for _, i, _ in rows], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "vendor_data": pa.array(vendor, pa.map_(pa.string(), pa.string())),
        }
    )
    n = len(rows)
    return Tail(
        table,
        np.full(n, partition, np.int32),
        np.arange(1_000, 1_000 + n),
        frozenset({partition} if whole else ()),
        frozenset(range(partitions)),
    )


def test_a_window_starting_with_backfilled_rows_opens_no_false_gap() -> None:
    """The reviewer's case: live 1..100 were written with 41..50 missing, the backfill of 41..50
    was written after 100, then live 101..150. A window of the newest 60 messages holds 41..50 and
    101..150: 51..100 are absent from it but were sent, so they must not become a gap (fetching
    them again would duplicate them)."""
    rows = [("BTCUSDT", i, True) for i in range(41, 51)] + [("BTCUSDT", i, False) for i in range(101, 151)]
    seed = topic_seed(_tail(rows))["BTCUSDT"]
    assert seed.holes_above == 102
    assert int(seed.ids.max()) == 150


def test_a_gap_inside_the_window_is_kept() -> None:
    """Live 1..30, a jump to 36 (gap 31..35 still open when ingest died): the gap is above the floor."""
    rows = [("ETHUSDT", i, False) for i in [*range(1, 31), *range(36, 40)]]
    seed = topic_seed(_tail(rows))["ETHUSDT"]
    assert seed.holes_above == 2
    assert sorted(set(range(1, 40)) - set(seed.ids.tolist())) == [31, 32, 33, 34, 35]


def test_a_partition_read_from_offset_zero_trusts_every_hole() -> None:
    rows = [("BTCUSDT", i, True) for i in range(41, 51)] + [("BTCUSDT", i, False) for i in range(101, 103)]
    assert topic_seed(_tail(rows, whole=True))["BTCUSDT"].holes_above is None


def test_symbols_are_seeded_separately_and_an_empty_tail_seeds_nothing() -> None:
    rows = [("BTCUSDT", 10, False), ("ETHUSDT", 7, False), ("BTCUSDT", 11, False), ("ETHUSDT", 9, False)]
    seeds = topic_seed(_tail(rows))
    assert {s: (v.ids.tolist(), v.holes_above) for s, v in seeds.items()} == {
        "BTCUSDT": ([10, 11], 11),
        "ETHUSDT": ([7, 9], 9),
    }
    assert topic_seed(_tail([])) == {}


def test_symbols_not_placed_by_the_tail_name_the_partitions_to_read_further_back() -> None:
    placed = [("BTCUSDT", i, False) for i in (10, 11, 12)]  # 12 is a new high after 10: placed
    assert unplaced(_tail(placed, partition=1, partitions=3), ["BTCUSDT"]) == set()
    # ETHUSDT is not in the tail: it may be in any partition not read from offset 0
    assert unplaced(_tail(placed, partition=1, partitions=3), ["BTCUSDT", "ETHUSDT"]) == {0, 1, 2}
    # only backfilled rows, or one live row: the symbol's position is not known, read its partition
    late = [("BTCUSDT", 5, True), ("BTCUSDT", 6, True), ("BTCUSDT", 20, False)]
    assert unplaced(_tail(late, partition=2, partitions=3), ["BTCUSDT"]) == {2}
    # read from offset 0: everything ever written is there, nothing more to read
    assert unplaced(_tail(late, partition=0, whole=True), ["BTCUSDT", "ETHUSDT"]) == set()
