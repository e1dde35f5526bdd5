from __future__ import annotations

from decimal import Decimal

import numpy as np

from k2.quality.checks import Anomaly, PriceJumpCheck, StaleFeedCheck, crossed_quotes, timestamp_anomalies
from k2.schema.quality_event import EventKind


def test_price_jump_flags_a_spike_against_the_rolling_median_only() -> None:
    check = PriceJumpCheck(max_fraction=Decimal("0.10"), window=5)
    prices = [Decimal(p) for p in ("100", "101", "99", "150", "100", "102", "89.99", "101")]
    ids = list(range(1, 9))
    got = check.check("BTCUSDT", ids, prices, [i * 1000 for i in ids])
    # 150 is 50% off the median 100; 89.99 is 10.01% under the median 100: both flagged
    assert got == [
        Anomaly(EventKind.PRICE_JUMP, "BTCUSDT", 4, 7, 2, 4000, "max deviation 0.500000 > 0.10 of the rolling median")
    ]
    # state carries across calls; a sustained move becomes the reference
    later = check.check("BTCUSDT", [9, 10, 11, 12, 13], [Decimal("130")] * 5, [0] * 5)
    assert [(a.first_id, a.last_id, a.count) for a in later] == [(9, 11, 3)]


def test_timestamp_anomalies_future_and_lag() -> None:
    ids = np.array([1, 2, 3, 4], dtype=np.int64)
    trade = np.array([1_000, 5_000_000, 0, 900], dtype=np.int64)
    recv = np.array([1_000, 1_000, 10_000_000, 1_000], dtype=np.int64)
    got = timestamp_anomalies("ETHUSDT", ids, trade, recv, max_future_us=1_000_000, max_lag_us=5_000_000)
    assert got == [
        Anomaly(EventKind.TIMESTAMP_FUTURE, "ETHUSDT", 2, 2, 1, 5_000_000, "worst 4999000 us (limit 1000000 us)"),
        Anomaly(EventKind.TIMESTAMP_LAG, "ETHUSDT", 3, 3, 1, 0, "worst 10000000 us (limit 5000000 us)"),
    ]


def test_stale_feed_reports_once_per_silence() -> None:
    check = StaleFeedCheck(max_silence_us=10)
    check.seen("BTCUSDT", 100)
    check.seen("ETHUSDT", 105)
    assert check.check(109) == []
    assert check.check(112) == [("BTCUSDT", 12)]
    assert check.check(200) == [("ETHUSDT", 95)]
    assert check.check(300) == []
    check.seen("BTCUSDT", 301)
    assert check.check(311) == [("BTCUSDT", 10)]


def test_crossed_quotes_hook() -> None:
    assert crossed_quotes("BTCUSDT", [Decimal(1), Decimal(3)], [Decimal(2), Decimal(3)]) == 1


def test_price_jump_fast_path_on_arrow_prices_matches_the_row_path() -> None:
    import pyarrow as pa

    dec = pa.decimal128(38, 12)
    calm = [Decimal("100") + Decimal(i % 7) / 10 for i in range(200)]
    spiky = [*calm[:120], Decimal("120"), *calm[120:]]
    for series in (calm, spiky):
        rows, cols = PriceJumpCheck(window=20), PriceJumpCheck(window=20)
        ids = list(range(len(series)))
        for start in range(0, len(series), 64):
            chunk = slice(start, start + 64)
            got = cols.check("X", ids[chunk], pa.array(series[chunk], dec), ids[chunk])
            assert got == rows.check("X", ids[chunk], series[chunk], ids[chunk])
        assert list(cols._recent["X"]) == list(rows._recent["X"])
    assert PriceJumpCheck(window=20).check("X", [0, 1], pa.array([Decimal(100), Decimal(120)], dec), [0, 0]) == [
        Anomaly(EventKind.PRICE_JUMP, "X", 1, 1, 1, 0, "max deviation 0.200000 > 0.05 of the rolling median")
    ]
