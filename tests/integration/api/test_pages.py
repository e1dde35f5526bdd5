"""Pages found through time windows (k2.api.series.Probe) are exactly the pages found without them.

Each walk follows cursors page by page on the real recording in the API tests' lake (two commits per
table, so pages cross files) and is compared with the selection's rows sorted in key order in Python.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest

from k2.api.params import Selection
from k2.api.routes import TRADES
from k2.api.routes_quotes import QUOTES
from k2.api.series import PROBE, Page, Probe, Series, decode_cursor, encode_cursor, open_page, plan_of
from k2.api.workers import Worker, WorkerPool
from k2.query.planner import from_us, to_us
from k2.schema.kinds import spec

from .conftest import SPLIT, Lake

MAX_SEQUENCE = 2**63 - 1
NO_PROBE = Probe(tries=0)
Key = tuple[Any, ...]


@pytest.fixture(scope="module")
def worker(api_lake: Lake) -> Iterator[Worker]:
    pool = WorkerPool(api_lake.settings)
    try:
        yield pool.workers[0]
    finally:
        pool.close()


def key_columns(series: Series) -> list[str]:
    return [part.expr.strip('"').removeprefix("coalesce(").split(",")[0] for part in series.key]


def keys_of(series: Series, rows: pa.Table) -> list[Key]:
    seq = key_columns(series).index("source_sequence")
    out = []
    for row in rows.select(key_columns(series)).to_pylist():
        values = list(row.values())
        values[seq] = MAX_SEQUENCE if values[seq] is None else values[seq]
        out.append(tuple(values))
    return out


_ALL_KEYS: dict[int, list[Key]] = {}  # each table's keys sorted, computed once


def expected(lake: Lake, series: Series, sel: Selection) -> list[Key]:
    """The selection's keys in key order, computed in Python from what the table holds."""
    table = lake.trades if series is TRADES else lake.quotes
    if id(table) not in _ALL_KEYS:
        _ALL_KEYS[id(table)] = sorted(keys_of(series, table))
    keys = _ALL_KEYS[id(table)]
    return [
        k
        for k in keys
        if (sel.symbol is None or k[2] == sel.symbol)
        and (sel.start is None or k[0] >= sel.start)
        and (sel.end is None or k[0] < sel.end)
    ]


def walk(
    worker: Worker, series: Series, sel: Selection, limit: int, probe: Probe, pages: int = 10**6
) -> tuple[list[Key], list[Page]]:
    """Up to ``pages`` pages from ``sel``'s start, each after the previous page's cursor."""
    keys: list[Key] = []
    seen: list[Page] = []
    after = None
    while len(seen) < pages:
        page = open_page(worker, series, sel, after, limit, 10_000, probe=probe)
        rows = keys_of(series, page.reader.read_all()) if page.reader is not None else []
        assert len(rows) <= limit
        keys += rows
        seen.append(page)
        if page.next_key is None:
            break
        assert len(rows) == limit and page.next_key == rows[-1]
        after = decode_cursor(series, encode_cursor(series, page.next_key))
    return keys, seen


def ties(keys: list[Key]) -> tuple[int, int]:
    """(index of the first row, size) of the largest group of rows with equal time."""
    best, size, i = 0, 0, 0
    while i < len(keys):
        j = i
        while j < len(keys) and keys[j][0] == keys[i][0]:
            j += 1
        if j - i > size:
            best, size = i, j - i
        i = j
    return best, size


def starts(lake: Lake, series: Series) -> list[datetime | None]:
    """No start, a start inside the first commit, one just before the commits' split (pages cross the
    two files) and one in the largest group of equal times."""
    keys = expected(lake, series, Selection("BTCUSDT", None, None, None))
    split_time = (lake.trades if series is TRADES else lake.quotes).column(key_columns(series)[0])[SPLIT].as_py()
    near_split = max(i for i, k in enumerate(keys) if k[0] < split_time) - 20
    first_tie, _ = ties(keys)
    return [None, keys[1_234][0], keys[near_split][0], keys[first_tie][0]]


@pytest.mark.parametrize("series", [TRADES, QUOTES], ids=["trades", "quotes"])
@pytest.mark.parametrize("limit", [1, 7, 1000])
def test_probed_pages_are_the_rows_of_the_ordered_query(
    worker: Worker, api_lake: Lake, series: Series, limit: int
) -> None:
    pages = 12 if limit == 1000 else 8  # the start just before the commits' split crosses it at once
    probed_by_window = 0
    for start in starts(api_lake, series):
        for sel in (Selection("BTCUSDT", None, start, None), Selection(None, None, start, None)):
            truth = expected(api_lake, series, sel)
            probed, probed_pages = walk(worker, series, sel, limit, PROBE, pages)
            plain, plain_pages = walk(worker, series, sel, limit, NO_PROBE, pages)
            assert probed == plain == truth[: len(probed)]
            assert len(probed) == min(len(truth), pages * limit)
            assert [p.next_key for p in probed_pages] == [p.next_key for p in plain_pages]
            assert all(p.windows == 0 for p in plain_pages)
            probed_by_window += sum(p.windows > 0 and not p.unbounded for p in probed_pages)
    assert probed_by_window > 0  # the windows were used, not only the query over every row


class FixedWindows(Probe):
    """Windows ending at given times (to put a window's end on a group of equal times)."""

    def __init__(self, *ends: datetime) -> None:
        super().__init__()
        object.__setattr__(self, "ends", [to_us(e) for e in ends])

    def windows(self, plan: Any, start: datetime | None, end: datetime | None, limit: int) -> list[int]:
        return list(self.__dict__["ends"])


@pytest.mark.parametrize("series", [TRADES, QUOTES], ids=["trades", "quotes"])
def test_a_window_ending_on_equal_times_widens_and_splits_no_group(
    worker: Worker, api_lake: Lake, series: Series
) -> None:
    keys = expected(api_lake, series, Selection("BTCUSDT", None, None, None))
    first, size = ties(keys)
    assert size >= 3, "the recording has groups of rows with equal times"
    tie_time = keys[first][0]
    sel = Selection("BTCUSDT", None, keys[first - 50][0], None)
    truth = expected(api_lake, series, sel)
    before = sum(k[0] < tie_time for k in truth)  # rows of the selection before the group
    edge = FixedWindows(tie_time, tie_time + timedelta(microseconds=1))
    # (limit, windows tried): the (limit+1)-th row before the group, then the limit-th or (limit+1)-th in it
    for limit, windows in ((before - 1, 1), (before, 2), (before + 1, 2), (before + size - 1, 2)):
        page = open_page(worker, series, sel, None, limit, 10_000, probe=edge)
        assert page.reader is not None
        assert keys_of(series, page.reader.read_all()) == truth[:limit]
        assert page.next_key == truth[limit - 1]
        assert (page.windows, page.unbounded) == (windows, False)
    # The whole group is the window's last rows: no (limit+1)-th row in it, so the bound comes from every row.
    page = open_page(worker, series, sel, None, before + size, 10_000, probe=edge)
    assert page.reader is not None and keys_of(series, page.reader.read_all()) == truth[: before + size]
    assert page.next_key == truth[before + size - 1] and (page.windows, page.unbounded) == (2, True)


def test_windows_too_small_widen_then_fall_back(worker: Worker, api_lake: Lake) -> None:
    keys = expected(api_lake, TRADES, Selection("BTCUSDT", None, None, None))
    sel = Selection("BTCUSDT", None, keys[3_000][0], None)
    truth = expected(api_lake, TRADES, sel)
    # First windows of 1 µs growing ×8: the pages need several widenings, none the query over every row.
    widening = Probe(rows=0, growth=8, tries=12)
    found, pages = walk(worker, TRADES, sel, 7, widening, pages=20)
    assert found == truth[:140]
    assert any(p.windows >= 2 and not p.unbounded for p in pages)
    # One window of 1 µs holding only the rows at the start's time (as many as the limit), then the
    # query over every row.
    limit = sum(k[0] == truth[0][0] for k in truth)
    found, pages = walk(worker, TRADES, sel, limit, Probe(rows=0, tries=1), pages=1)
    assert found == truth[:limit] and pages[0].next_key == truth[limit - 1]
    assert (pages[0].windows, pages[0].unbounded) == (1, True)


def test_window_bounds_follow_the_plan_and_stay_inside_it(worker: Worker) -> None:
    sel = Selection("BTCUSDT", None, None, None)
    plan = plan_of(worker, TRADES.kind, sel)
    assert plan is not None and plan.min_timestamp_us is not None and plan.max_timestamp_us is not None
    first, last = plan.min_timestamp_us, plan.max_timestamp_us
    rate_width = -(-4 * 11 * (last - first + 1) // plan.rows)  # 4 × (limit + 1) rows at the mean rate
    bounds = PROBE.windows(plan, None, None, 10)
    assert bounds == [first + rate_width * 8**i for i in range(3)]
    start = from_us(first + 1_000_000)
    assert PROBE.windows(plan, start, None, 10)[0] == to_us(start) + rate_width
    # Never a window reaching the selection's end or past the planned rows: that is the whole query.
    assert all(b <= last for b in PROBE.windows(plan, None, None, plan.rows // 12))
    assert PROBE.windows(plan, None, None, plan.rows) == []
    end = from_us(first + rate_width * 8)
    assert PROBE.windows(plan, None, end, 10) == [first + rate_width]
    # Metadata that says nothing: no windows (no division by zero or None).
    for blind in ({"min_timestamp_us": None}, {"max_timestamp_us": None}, {"rows": 0}):
        assert PROBE.windows(dataclasses.replace(plan, **blind), None, None, 10) == []  # type: ignore[arg-type]
    assert Probe(tries=0).windows(plan, None, None, 10) == []


@pytest.mark.parametrize("series", [TRADES, QUOTES], ids=["trades", "quotes"])
def test_the_key_starts_with_the_time_column_the_plan_describes(series: Series) -> None:
    assert series.key[0].expr.strip('"') == spec(series.kind).time_column
