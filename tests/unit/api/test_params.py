"""The shared selection: names checked and upper-cased, times made UTC (clamped, never overflowing), empty ranges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from k2.api.params import Selection, check_name, selection, utc
from k2.errors import QueryError


def test_selection_upper_cases_names_and_makes_times_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    sel = selection("btcusdt", "binance", datetime(2024, 8, 9, 2, 0, tzinfo=plus2), datetime(2024, 8, 9, 1, 0))
    assert sel == Selection(
        "BTCUSDT", "BINANCE", datetime(2024, 8, 9, 0, 0, tzinfo=UTC), datetime(2024, 8, 9, 1, tzinfo=UTC)
    )
    assert not sel.empty
    assert selection(start=sel.end, end=sel.start).empty
    assert selection(start=sel.start, end=sel.start).empty
    assert sel.from_start(sel.end or sel.start or datetime.now(UTC)).empty


def test_times_beyond_utc_are_clamped() -> None:
    assert utc(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))) == datetime.min.replace(tzinfo=UTC)
    assert utc(datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))) == datetime.max.replace(tzinfo=UTC)
    assert utc(None) is None


@pytest.mark.parametrize("bad", ["BTC USDT", "", "x" * 41, "BTC'--", "-BTC", "BTC\x00"])
def test_names_outside_the_pattern_are_refused(bad: str) -> None:
    with pytest.raises(QueryError, match="invalid symbol"):
        check_name(bad, "symbol")
