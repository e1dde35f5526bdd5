"""Property-based tests (hypothesis) of the Coinbase stream and REST parsers.

For ANY input, each parser either returns rows or quarantines, and never raises (the REST parser may
raise SourceError, its documented answer to a body that is not a JSON array); every frame is
accounted for exactly once (rows + rejected + control == frames); and every row it returns holds
exactly what the message's text says (Decimal(text) == the stored decimal, RFC 3339 time to the
microsecond, ids, product, the aggressor side opposite to the maker side). Inputs: arbitrary bytes,
arbitrary JSON values, match- and ticker-shaped objects with arbitrary field values, and mutations of
the real recorded messages in tests/fixtures/coinbase/ (deleted fields, changed types, boundary
numbers, absurd times and decimals, foreign products and message types).

Runs are bounded and deterministic (``derandomize``, no example database).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from k2.errors import SourceError
from k2.feed.stamp import parse_canonical
from k2.schema.kinds import RecordKind
from k2.sources import ParsedBatch, RawFrame
from k2.sources.coinbase.rest import parse_trades_page
from k2.sources.coinbase.wire import LAUNCH_US
from k2.sources.symbols import Instrument
from k2.sources.timestamps import format_us
from k2.sources.validation import INT64_MAX
from tests.conftest import FIXTURES
from tests.unit.sources.properties import DEEP, PROPERTIES, dumps, json_scalars, json_values

PRODUCTS = ("SKL-BTC", "BAND-GBP", "SKL-GBP", "YFI-BTC")
COINBASE = FIXTURES / "coinbase"
RECORDED: list[bytes] = [
    line
    for line in (COINBASE / "exchange_ws_frames.jsonl").read_bytes().splitlines()
    if json.loads(line)["type"] in ("match", "last_match", "ticker")
]
REST_PAGE: list[dict[str, Any]] = json.loads((COINBASE / "exchange_rest_trades_BTC-EUR_2020-02-17.json").read_bytes())
RECEIVED_US = 1_618_677_900_000_000  # just after the newest recorded message (2021-04-17 16:45 UTC)
MATCH_FIELDS = ("type", "trade_id", "maker_order_id", "taker_order_id", "side", "size", "price", "product_id",
                "sequence", "time")  # fmt: skip
TICKER_FIELDS = ("type", "sequence", "product_id", "best_bid", "best_ask", "best_bid_size", "best_ask_size", "time",
                 "price", "side", "trade_id", "last_size")  # fmt: skip

# --- strategies ---------------------------------------------------------------------------------------
BOUNDARY_INTS = st.sampled_from([0, -1, 1, 2**31, 2**53 + 1, INT64_MAX, INT64_MAX + 1, 2**64, -(2**63) - 1, 10**30])
BOUNDARY_DECIMALS = st.sampled_from(
    ["1" * 38, "1" * 27, "1" * 26, "0." + "0" * 11 + "1", "0." + "0" * 12 + "1", "1.0000000000000", "١٢", " 1.5",
     "1_000", "1e3", "NaN", "Infinity", "-0", "+1.5", "", ".5", "1.", "0", "0.00000000", "-0.7904", "0.7904",
     "0.00001303", "0.00001305", "14.8060"]
)  # fmt: skip
BOUNDARY_TIMES = st.sampled_from(
    ["2021-04-17T16:43:37.089723Z", "2021-04-17T16:43:37Z", "2021-04-17T16:43:37.089723123Z",
     "2021-04-17T18:43:37+02:00", "2021-04-17 16:43:37", "2021-02-29T00:00:00Z", "2021-04-17T24:00:00Z",
     "1970-01-01T00:00:00Z",
     "2015-01-26T00:00:00Z", "2015-01-25T23:59:59.999999Z", "9999-12-31T23:59:59.999999Z", "10000-01-01T00:00:00Z",
     "+294247-01-10T04:00:54.775808Z", "-0001-01-01T00:00:00Z", "２０２１-04-17T16:43:37Z", "", "Z"]
)  # fmt: skip
TIMES_AROUND = st.integers(LAUNCH_US - 10**6, RECEIVED_US + 400 * 10**6).map(format_us)
JSON_VALUES = json_values(json_scalars(BOUNDARY_INTS, BOUNDARY_DECIMALS))
FIELD_VALUES = (
    BOUNDARY_INTS | BOUNDARY_DECIMALS | BOUNDARY_TIMES | TIMES_AROUND
    | st.integers(min_value=-(2**70), max_value=2**70) | st.from_regex(r"-?[0-9]{1,40}(\.[0-9]{0,15})?", fullmatch=True)
    | st.text(max_size=12)
    | st.sampled_from([None, True, False, [], {}, 1.5, "match", "last_match", "ticker", "heartbeat", "l2update",
                       "error", "subscriptions", "buy", "sell", "BUY", *PRODUCTS, "BTC-USD", "skl-btc"])
)  # fmt: skip


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    """A real recorded message with 0 to 3 changes: a field deleted, set to a boundary value or
    retyped, or the whole message replaced by any JSON value."""
    message: Any = json.loads(draw(st.sampled_from(RECORDED)))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["delete", "set", "set", "set", "retype", "replace"]))
        name = draw(st.sampled_from(MATCH_FIELDS + TICKER_FIELDS))
        if op == "delete" and isinstance(message, dict):
            message.pop(name, None)
        elif op == "set" and isinstance(message, dict):
            message[name] = draw(FIELD_VALUES)
        elif op == "retype" and isinstance(message, dict) and name in message:
            value = message[name]
            message[name] = str(value) if not isinstance(value, str) else draw(BOUNDARY_INTS | st.just(1.5))
        elif op == "replace":
            message = draw(JSON_VALUES)
    return dumps(message)


@st.composite
def shaped(draw: st.DrawFn) -> bytes:
    """An object with (some of) a match's or ticker's keys, each holding any value."""
    keys = draw(st.lists(st.sampled_from(MATCH_FIELDS + TICKER_FIELDS), unique=True))
    return dumps({k: draw(FIELD_VALUES | JSON_VALUES) for k in keys})


# --- checks -------------------------------------------------------------------------------------------
def _parse(payloads: list[bytes], is_sample_data: bool) -> tuple[list[RawFrame], ParsedBatch]:
    """Each frame gets its own receive time, so a row leads back to its frame."""
    frames = [RawFrame(p, RECEIVED_US + i) for i, p in enumerate(payloads)]
    parsed = parse_canonical(
        "coinbase", frames, symbols=PRODUCTS, kinds=(RecordKind.TRADES, RecordKind.QUOTES),
        is_sample_data=is_sample_data,
    )  # fmt: skip
    return frames, parsed


def _us(dt: datetime) -> int:
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 10**6 + delta.microseconds


def _oracle_us(text: str) -> int:
    """A stored time's µs by another route: Python's own ISO parser, on the text with its fraction cut
    to six digits (K2 floors nanoseconds)."""
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        rest = (rest[:digits] + "000000")[:6] + rest[digits:]
    return _us(datetime.fromisoformat(head + dot + rest))


def _assert_accounted_and_exact(frames: list[RawFrame], parsed: ParsedBatch) -> None:
    rows = parsed.rows(RecordKind.TRADES) + parsed.rows(RecordKind.QUOTES)
    assert rows + len(parsed.rejected) + parsed.control == len(frames)
    assert all(r.reason.value and r.detail for r in parsed.rejected)
    by_received = {f.received_at_us: f for f in frames}
    rejected = {id(r.frame) for r in parsed.rejected}
    trades = parsed.records.get(RecordKind.TRADES)
    for row, ts in zip(
        trades.to_pylist() if trades else [], trades.column("timestamp").cast(pa.int64()).to_pylist() if trades else [],
        strict=True,
    ):  # fmt: skip
        frame = by_received[_us(row["ingestion_timestamp"])]
        assert id(frame) not in rejected, "a frame is a row or a reject, never both"
        m = json.loads(frame.payload)
        assert m["type"] in ("match", "last_match") and m["product_id"] in PRODUCTS == PRODUCTS
        assert row["symbol"] == m["product_id"] and row["trade_id"] == str(m["trade_id"]) and m["trade_id"] >= 0
        assert row["price"] == Decimal(m["price"]) > 0 and row["quantity"] == Decimal(m["size"]) > 0
        assert row["side"] == {"sell": "BUY", "buy": "SELL"}[m["side"]]
        assert ts == _oracle_us(m["time"])
        assert LAUNCH_US <= ts <= _us(row["ingestion_timestamp"]) + 300_000_000
        assert dict(row["vendor_data"])["sequence"] == str(m["sequence"])
    quotes = parsed.records.get(RecordKind.QUOTES)
    for row in quotes.to_pylist() if quotes else []:
        frame = by_received[_us(row["ingestion_timestamp"])]
        assert id(frame) not in rejected
        t = json.loads(frame.payload)
        assert t["type"] == "ticker" and row["symbol"] == t["product_id"] and row["source_sequence"] == t["sequence"]
        assert row["bid_price"] == Decimal(t["best_bid"]) > 0 and row["ask_price"] == Decimal(t["best_ask"])
        assert row["bid_price"] < row["ask_price"]
        for size, name in ((row["bid_size"], "best_bid_size"), (row["ask_size"], "best_ask_size")):
            assert size == (None if t.get(name) is None else Decimal(t[name]))
        assert (row["timestamp"] is None) == (t.get("time") is None)


@PROPERTIES
@given(st.lists(st.binary(max_size=300) | DEEP, min_size=1, max_size=8), st.booleans())
def test_any_bytes_are_rows_rejects_or_control(payloads: list[bytes], is_sample_data: bool) -> None:
    _assert_accounted_and_exact(*_parse(payloads, is_sample_data))


@PROPERTIES
@given(st.lists(JSON_VALUES.map(dumps), min_size=1, max_size=6), st.booleans())
def test_any_json_value_is_rows_rejects_or_control(payloads: list[bytes], is_sample_data: bool) -> None:
    _assert_accounted_and_exact(*_parse(payloads, is_sample_data))


@PROPERTIES
@given(st.lists(shaped(), min_size=1, max_size=6), st.booleans())
def test_any_message_shaped_object_is_rows_rejects_or_control(payloads: list[bytes], is_sample_data: bool) -> None:
    _assert_accounted_and_exact(*_parse(payloads, is_sample_data))


@PROPERTIES
@given(st.lists(mutated_messages(), min_size=1, max_size=8), st.booleans())
def test_mutated_real_messages_are_stored_exactly_or_quarantined(payloads: list[bytes], is_sample_data: bool) -> None:
    _assert_accounted_and_exact(*_parse([*RECORDED, *payloads], is_sample_data=True))
    _assert_accounted_and_exact(*_parse(payloads, is_sample_data))


def test_the_real_messages_themselves_parse() -> None:
    frames, parsed = _parse(RECORDED, is_sample_data=True)
    assert parsed.rejected == [] and parsed.rows(RecordKind.TRADES) + parsed.rows(RecordKind.QUOTES) == len(RECORDED)
    _assert_accounted_and_exact(frames, parsed)


# --- the REST parser ----------------------------------------------------------------------------------
@st.composite
def rest_pages(draw: st.DrawFn) -> bytes:
    page: list[Any] = []
    for _ in range(draw(st.integers(0, 5))):
        element: Any = dict(draw(st.sampled_from(REST_PAGE)))
        for _ in range(draw(st.integers(0, 3))):
            name = draw(st.sampled_from(("time", "trade_id", "price", "size", "side")))
            op = draw(st.sampled_from(["delete", "set", "set", "replace"]))
            if op == "delete" and isinstance(element, dict):
                element.pop(name, None)
            elif op == "set" and isinstance(element, dict):
                element[name] = draw(FIELD_VALUES)
            elif op == "replace":
                element = draw(JSON_VALUES)
        page.append(element)
    return dumps(page)


def _assert_rest(payload: bytes) -> None:
    try:
        got = parse_trades_page(payload, "BTC-EUR", received_at_us=RECEIVED_US, instrument=Instrument("BTC", "EUR"))
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
    for row in got.batch.to_pylist():
        candidates = [e for e in elements if isinstance(e, dict) and e.get("trade_id") == row["source_sequence"]]
        assert any(_rest_row_is(row, e) for e in candidates), (row, candidates)


def _rest_row_is(row: dict[str, Any], element: dict[str, Any]) -> bool:
    try:
        return bool(
            row["price"] == Decimal(element["price"]) > 0
            and row["quantity"] == Decimal(element["size"]) > 0
            and row["side"] == {"sell": "BUY", "buy": "SELL"}[element["side"]]
            and dict(row["vendor_data"])["maker_side"] == element["side"]
            and LAUNCH_US <= _us(row["timestamp"]) <= RECEIVED_US + 300_000_000
        )
    except (ArithmeticError, KeyError, TypeError, ValueError):
        return False


@PROPERTIES
@given(st.binary(max_size=400) | DEEP | DEEP.map(lambda deep: b'[{"trade_id":' + deep + b"}]"))
def test_rest_any_bytes_are_rows_rejects_or_a_source_error(payload: bytes) -> None:
    _assert_rest(payload)


@PROPERTIES
@given(JSON_VALUES.map(dumps))
def test_rest_any_json_is_rows_rejects_or_a_source_error(payload: bytes) -> None:
    _assert_rest(payload)


@PROPERTIES
@given(rest_pages())
def test_rest_mutated_real_pages_are_stored_exactly_or_quarantined(payload: bytes) -> None:
    _assert_rest(payload)
