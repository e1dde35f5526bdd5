"""Property-based tests (hypothesis) of the Binance stream and REST parsers.

For ANY input, each parser either returns rows or quarantines, and never raises (the REST parser may
raise SourceError, its documented answer to a body that is not a JSON array); every frame is
accounted for exactly once (rows + rejected + control == frames); and every row it returns holds
exactly what the frame's text says (Decimal(text) == the stored decimal, times to the microsecond,
ids, symbol, side). Inputs: arbitrary bytes, arbitrary JSON values, trade-shaped objects with
arbitrary field values, and mutations of the real recorded frames in tests/fixtures/binance/
(deleted fields, changed types, boundary numbers: 0, -1, 2^63-1, 2^63, 2^64, huge and negative
times, 38/39/50-digit and 13-place decimals, other digit scripts, spaces, underscores, exponents,
NaN/Infinity).

Runs are bounded and deterministic (``derandomize``, no example database): CI sees the same examples
every time. Never-looping is covered by pytest's timeout.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from k2.errors import SourceError
from k2.feed.stamp import parse_canonical
from k2.schema.kinds import RecordKind
from k2.sources import ParsedBatch, RawFrame
from k2.sources.binance.wire import LAUNCH_US
from k2.sources.validation import (
    INT64_MAX,
    INT64_MIN,
    TimeWindow,
    exact_decimal_mask,
    int64_column,
    to_decimal,
    within_window,
)
from tests.conftest import FIXTURES, rest_trades
from tests.unit.sources.properties import DEEP, PROPERTIES, dumps, json_scalars, json_values

SYMBOLS = ("BTCUSDT", "ETHUSDT")
RECORDED: list[bytes] = [
    line for path in sorted((FIXTURES / "binance").glob("*.jsonl")) for line in path.read_bytes().splitlines() if line
]
REST_PAGE: list[dict[str, Any]] = json.loads((FIXTURES / "binance" / "rest_historical_trades.json").read_bytes())
RECEIVED_US = 1_723_161_906_000_000  # just after the newest recorded frame (2024-08-09 00:05:05 UTC)
DECIMAL_TEXT = re.compile(r"-?[0-9]{1,26}(\.[0-9]{1,12})?", re.ASCII)
TRADE_FIELDS = ("e", "E", "s", "t", "p", "q", "T", "m", "M", "b", "a")
REST_FIELDS = ("id", "price", "qty", "quoteQty", "time", "isBuyerMaker", "isBestMatch")
LAUNCH_MS = LAUNCH_US // 1000
YEAR_10000_MS = 253_402_300_800_000

# --- strategies ---------------------------------------------------------------------------------------
BOUNDARY_INTS = st.sampled_from(
    [0, -1, 1, 2**31, 2**53 + 1, INT64_MAX, INT64_MAX + 1, 2**64 - 1, 2**64, INT64_MIN, INT64_MIN - 1, 10**30,
     -(10**30), LAUNCH_MS - 1, LAUNCH_MS, 1723161255342, 1723161255342 * 1000, YEAR_10000_MS, YEAR_10000_MS - 1,
     -1723161255342, 1723161255342 + 300 * 365 * 86_400_000]
)  # fmt: skip
BOUNDARY_DECIMALS = st.sampled_from(
    ["1" * 38, "1" * 39, "1" * 50, "9" * 26 + "." + "9" * 12, "1" * 27, "1" * 26, "0." + "0" * 11 + "1",
     "0." + "0" * 12 + "1", "1.1234567890123", "1.000000000000", "1.0000000000000", "１２", "٦١٨٣٧.٦٣", "१२३",
     " 1.5", "1.5 ", "1 5", "1_000", "1e3", "1E-3", "NaN", "nan", "Infinity", "-Infinity", "-0", "-0.0", "+1.5",
     "", ".5", "1.", "-", "0x10", "1,5", "1.5\n", "\u00a01.5", "0", "0.00000000", "-61837.63000000",
     "61837.63000000", "0.00000001"]
)  # fmt: skip
JSON_VALUES = json_values(json_scalars(BOUNDARY_INTS, BOUNDARY_DECIMALS))
FIELD_VALUES = (
    BOUNDARY_INTS
    | BOUNDARY_DECIMALS
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.from_regex(r"-?[0-9]{1,40}(\.[0-9]{0,15})?", fullmatch=True)
    | st.text(max_size=12)
    | st.sampled_from([None, True, False, [], {}, 1.5, -0.0, "trade", "BTCUSDT", "ETHUSDT", "BNBUSDT", "btcusdt"])
)
STREAMS = st.sampled_from(["btcusdt@trade", "ethusdt@trade", "bnbusdt@trade", "btcusdt@aggTrade", "BTCUSDT@trade", ""])


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A real recorded frame with 0 to 3 changes: a field deleted, set to a boundary value, or of
    another type; the envelope's stream renamed, its data replaced, or the frame unwrapped (raw)."""
    envelope: dict[str, Any] = json.loads(draw(st.sampled_from(RECORDED)))
    data: Any = envelope.get("data", envelope)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["delete", "set", "set", "set", "retype", "stream", "data", "raw"]))
        field = draw(st.sampled_from(TRADE_FIELDS))
        if op == "delete" and isinstance(data, dict):
            data.pop(field, None)
        elif op == "set" and isinstance(data, dict):
            data[field] = draw(FIELD_VALUES)
        elif op == "retype" and isinstance(data, dict) and field in data:
            value = data[field]
            data[field] = str(value) if not isinstance(value, str) else draw(BOUNDARY_INTS | st.just(1.5))
        elif op == "stream":
            envelope = {"stream": draw(STREAMS), "data": data}
        elif op == "data":
            data = draw(JSON_VALUES)
            envelope = {"stream": envelope.get("stream", "btcusdt@trade"), "data": data}
        elif op == "raw":
            envelope = data if isinstance(data, dict) else {"data": data}
        if "data" in envelope:
            envelope["data"] = data
        else:
            envelope = data if isinstance(data, dict) else envelope
    return dumps(envelope)


@st.composite
def trade_shaped(draw: st.DrawFn) -> bytes:
    """An object with (some of) the trade's keys, each holding any JSON value, raw or enveloped."""
    keys = draw(st.lists(st.sampled_from(TRADE_FIELDS), unique=True))
    data = {k: draw(FIELD_VALUES | JSON_VALUES) for k in keys}
    if draw(st.booleans()):
        return dumps({"stream": draw(STREAMS | st.text(max_size=8)), "data": data})
    return dumps(data)


# --- checks -------------------------------------------------------------------------------------------
def _parse(payloads: list[bytes], is_sample_data: bool) -> tuple[list[RawFrame], ParsedBatch]:
    """Each frame gets its own receive time, so a row leads back to its frame."""
    frames = [RawFrame(p, RECEIVED_US + i) for i, p in enumerate(payloads)]
    return frames, parse_canonical("binance", frames, symbols=SYMBOLS, first_sequence=1, is_sample_data=is_sample_data)


def _assert_accounted_and_exact(frames: list[RawFrame], parsed: ParsedBatch) -> None:
    assert parsed.rows(RecordKind.TRADES) + len(parsed.rejected) + parsed.control == len(frames)
    assert all(r.reason.value and r.detail for r in parsed.rejected)
    batch = parsed.records.get(RecordKind.TRADES)
    if batch is None:
        return
    assert batch.schema.field("price").type == pa.decimal128(38, 12)
    by_received = {f.received_at_us: f for f in frames}
    rejected = {id(r.frame) for r in parsed.rejected}
    received_us = batch.column("ingestion_timestamp").cast(pa.int64()).to_pylist()
    trade_us = batch.column("timestamp").cast(pa.int64()).to_pylist()
    for row, received, ts in zip(batch.to_pylist(), received_us, trade_us, strict=True):
        frame = by_received[received]
        assert id(frame) not in rejected, "a frame is a row or a reject, never both"
        text = json.loads(frame.payload)
        data = text.get("data", text)
        if "stream" in text:
            assert text["stream"] == f"{data['s'].lower()}@trade"
        assert data["e"] == "trade" and data["s"] in SYMBOLS and row["symbol"] == data["s"]
        assert row["price"] == Decimal(data["p"]) > 0 and row["quantity"] == Decimal(data["q"]) > 0
        assert row["trade_id"] == str(data["t"]) and row["source_sequence"] == data["t"] >= 0
        assert ts == data["T"] * 1000 and LAUNCH_US <= ts <= received + 300_000_000
        vendor = dict(row["vendor_data"])
        assert vendor["trade_time"] == str(data["T"]) and vendor["event_time"] == str(data["E"])
        assert row["side"] == ("SELL" if data["m"] else "BUY")
        assert vendor["is_best_match"] == str(data["M"]).lower() if "M" in data else "is_best_match" not in vendor


# --- the stream parser --------------------------------------------------------------------------------
@st.composite
def nested_in_a_frame(draw: st.DrawFn) -> bytes:
    """A real frame with one field, its ``data`` or the whole frame replaced by deeply nested JSON."""
    deep = draw(DEEP)
    frame = draw(st.sampled_from(RECORDED))
    where = draw(st.sampled_from([b'"p":', b'"e":', b'"data":', b'"stream":']))
    if where not in frame:
        return deep
    head, _, tail = frame.partition(where)
    return head + where + deep + b"," + tail.partition(b",")[2] if b"," in tail else head + where + deep + b"}"


@PROPERTIES
@given(st.lists(st.binary(max_size=300) | nested_in_a_frame(), min_size=1, max_size=8), st.booleans())
def test_any_bytes_are_rows_rejects_or_control(payloads: list[bytes], is_sample_data: bool) -> None:
    _assert_accounted_and_exact(*_parse(payloads, is_sample_data))


@PROPERTIES
@given(st.lists(JSON_VALUES.map(dumps), min_size=1, max_size=6), st.booleans())
def test_any_json_value_is_rows_rejects_or_control(payloads: list[bytes], is_sample_data: bool) -> None:
    _assert_accounted_and_exact(*_parse(payloads, is_sample_data))


@PROPERTIES
@given(st.lists(trade_shaped(), min_size=1, max_size=6), st.booleans())
def test_any_trade_shaped_object_is_rows_rejects_or_control(payloads: list[bytes], is_sample_data: bool) -> None:
    _assert_accounted_and_exact(*_parse(payloads, is_sample_data))


@PROPERTIES
@given(st.lists(mutated_frames(), min_size=1, max_size=8), st.booleans())
def test_mutated_real_frames_are_stored_exactly_or_quarantined(payloads: list[bytes], is_sample_data: bool) -> None:
    # Among real frames, so that a batch mixes good and bad rows.
    frames, parsed = _parse([*RECORDED[:3], *payloads], is_sample_data=True)
    _assert_accounted_and_exact(frames, parsed)
    _assert_accounted_and_exact(*_parse(payloads, is_sample_data))


def test_the_real_frames_themselves_parse() -> None:
    frames, parsed = _parse(RECORDED, is_sample_data=True)
    assert parsed.rejected == [] and parsed.rows(RecordKind.TRADES) == len(RECORDED)
    _assert_accounted_and_exact(frames, parsed)


# --- the REST parser ----------------------------------------------------------------------------------
@st.composite
def rest_pages(draw: st.DrawFn) -> bytes:
    page: list[Any] = []
    for _ in range(draw(st.integers(0, 5))):
        element: Any = dict(draw(st.sampled_from(REST_PAGE)))
        for _ in range(draw(st.integers(0, 3))):
            field = draw(st.sampled_from(REST_FIELDS))
            op = draw(st.sampled_from(["delete", "set", "set", "replace"]))
            if op == "delete" and isinstance(element, dict):
                element.pop(field, None)
            elif op == "set" and isinstance(element, dict):
                element[field] = draw(FIELD_VALUES)
            elif op == "replace":
                element = draw(JSON_VALUES)
        page.append(element)
    return dumps(page)


def _assert_rest(payload: bytes, received_us: int) -> None:
    try:
        got = rest_trades(payload, "BTCUSDT", received_at_us=received_us, first=1, sample=False)
    except SourceError as exc:
        try:
            decoded = msgspec.json.decode(payload)
        except (msgspec.DecodeError, RecursionError):
            return
        too_deep = "recursion" in str(exc)  # nested beyond the decoder's depth limit: garbage, as a whole
        assert too_deep or not isinstance(decoded, list), "a JSON array is never refused as a whole"
        return
    elements = msgspec.json.decode(payload)
    assert isinstance(elements, list)
    assert len(got.ids) + len(got.parsed.rejected) == len(elements)
    assert (got.batch is None) == (not got.ids)
    if got.batch is None:
        return
    assert got.batch.column("source_sequence").to_pylist() == got.ids
    kept = [e for e in elements if isinstance(e, dict) and e.get("id") in got.ids]
    for row, ts in zip(got.batch.to_pylist(), got.batch.column("timestamp").cast(pa.int64()).to_pylist(), strict=True):
        # A page may hold two elements with one id (one of them rejected): the row is exactly one of them.
        candidates = [e for e in kept if e["id"] == row["source_sequence"]]
        assert any(_rest_row_is(row, ts, e, received_us) for e in candidates), (row, candidates)


def _rest_row_is(row: dict[str, Any], ts: int, element: dict[str, Any], received_us: int) -> bool:
    """The row stores exactly ``element`` (every field a valid element can hold)."""
    try:
        vendor = dict(row["vendor_data"])
        return bool(
            row["price"] == Decimal(element["price"]) > 0
            and row["quantity"] == Decimal(element["qty"]) > 0
            and vendor["quote_quantity"] == element["quoteQty"]
            and ts == element["time"] * 1000
            and LAUNCH_US <= ts <= received_us + 300_000_000
            and row["side"] == ("SELL" if element["isBuyerMaker"] else "BUY")
            and row["symbol"] == "BTCUSDT"
        )
    except (ArithmeticError, KeyError, TypeError, ValueError):
        return False  # this element cannot be the row (a mutated field of another type)


@PROPERTIES
@given(st.binary(max_size=400) | DEEP | DEEP.map(lambda deep: b'[{"id":' + deep + b"}]"))
def test_rest_any_bytes_are_rows_rejects_or_a_source_error(payload: bytes) -> None:
    _assert_rest(payload, RECEIVED_US)


@PROPERTIES
@given(JSON_VALUES.map(dumps))
def test_rest_any_json_is_rows_rejects_or_a_source_error(payload: bytes) -> None:
    _assert_rest(payload, RECEIVED_US)


@PROPERTIES
@given(rest_pages(), st.integers(min_value=0, max_value=2 * RECEIVED_US))
def test_rest_mutated_real_pages_are_stored_exactly_or_quarantined(payload: bytes, received_us: int) -> None:
    _assert_rest(payload, received_us)


# --- the venue-independent helpers against plain-Python oracles ----------------------------------------
@PROPERTIES
@given(st.lists(st.text(max_size=45) | BOUNDARY_DECIMALS | st.from_regex(DECIMAL_TEXT, fullmatch=True), min_size=1))
def test_decimal_text_check_is_the_documented_rule_and_the_cast_is_exact(texts: list[str]) -> None:
    column = pa.array(texts, pa.string())
    mask = exact_decimal_mask(column, 38, 12)
    assert mask.tolist() == [DECIMAL_TEXT.fullmatch(t) is not None for t in texts]
    values = to_decimal(column, mask, pa.decimal128(38, 12)).to_pylist()
    for text, ok, value in zip(texts, mask.tolist(), values, strict=True):
        assert value == (Decimal(text) if ok else 0)


@PROPERTIES
@given(st.lists(st.integers(min_value=-(2**70), max_value=2**70) | BOUNDARY_INTS, min_size=1))
def test_int64_column_keeps_exactly_the_values_that_fit(values: list[int]) -> None:
    column, fits = int64_column(values)
    assert fits.tolist() == [INT64_MIN <= v <= INT64_MAX for v in values]
    assert [int(c) for c, ok in zip(column, fits, strict=True) if ok] == [
        v for v in values if INT64_MIN <= v <= INT64_MAX
    ]


def _fits(value: int) -> bool:
    return INT64_MIN <= value <= INT64_MAX


@PROPERTIES
@given(
    st.lists(st.integers(min_value=INT64_MIN, max_value=INT64_MAX) | BOUNDARY_INTS.filter(_fits), min_size=1),
    st.integers(min_value=0, max_value=2**62),
    st.sampled_from([1, 1000]),
    st.integers(min_value=0, max_value=10**12),
    st.none() | st.integers(min_value=1, max_value=10**12),
)  # fmt: skip
def test_time_window_matches_the_exact_arithmetic(
    times: list[int], received: int, unit: int, future: int, age: int | None
) -> None:
    window = TimeWindow(LAUNCH_US, future, age)
    arr = np.array(times, np.int64)
    got = within_window(arr, np.ones(len(times), np.bool_), np.full(len(times), received, np.int64), window, unit)
    clipped = min(received, 253_402_300_799_999_999)
    for t, ok in zip(times, got.tolist(), strict=True):
        us = t * unit  # Python ints: no overflow in the oracle
        expected = LAUNCH_US <= us <= min(clipped + future, 253_402_300_799_999_999)
        if age is not None:
            expected = expected and us >= clipped - age
        assert ok == expected, (t, unit)
