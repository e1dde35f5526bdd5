"""Property-based tests (hypothesis) of the Kraken v2 and REST parsers.

For ANY input, a parser returns rows or quarantines and never raises (the REST parser may raise
SourceError, its documented answer to a body that is not a Kraken answer); every frame is accounted for
exactly once: its trades or quotes stored together, or one reject, or one control message; and every row
holds exactly what the frame's text says (``Decimal(text)`` of each number, the time to the microsecond,
ids, symbol, side). Inputs: arbitrary bytes, arbitrary JSON values, Kraken-shaped messages with arbitrary
field values, and mutations of the real recorded messages in tests/fixtures/kraken/ (deleted fields,
boundary numbers written as JSON numbers and strings, other types, other channels and types).

Runs are bounded and deterministic (``derandomize``, no example database).
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from k2.errors import SourceError
from k2.schema.kinds import RecordKind
from k2.sources import ParsedBatch, RawFrame
from k2.sources.kraken.rest import parse_trades_page
from k2.sources.kraken.wire import LAUNCH_US
from k2.sources.symbols import Instrument
from tests.unit.sources.kraken.recorded import REST_PAGE, SNIPPETS, TRADE_UPDATE_RECV_US, parser
from tests.unit.sources.properties import PROPERTIES, json_values

SYMBOLS = ("BTC/USD", "BTC/USDT")
RECORDED: list[str] = list(SNIPPETS.values())
DATA_MESSAGES = ("trade_snapshot", "trade_update", "ticker_snapshot", "ticker_update")
TRADE_FIELDS = ("symbol", "side", "price", "qty", "ord_type", "trade_id", "timestamp")
TICKER_FIELDS = ("symbol", "bid", "bid_qty", "ask", "ask_qty", "last", "volume", "timestamp")
RECEIVED_US = TRADE_UPDATE_RECV_US
MAX_FUTURE_US = 300_000_000


class Number(str):
    """Text written into JSON as a bare number (``0.10000000``, ``1E+5``): the value's own text."""


BOUNDARY_NUMBERS = st.sampled_from(
    ["0", "-0", "-0.0", "1", "-1", "0.10000000", "66450.0", "0.010", "68500.0", "1" * 38, "1" * 39, "9" * 50,
     "9" * 26 + "." + "9" * 12, "0." + "0" * 11 + "1", "0." + "0" * 12 + "1", "1e-8", "1E+5", "1e999999999",
     "1e-999999999", str(2**63 - 1), str(2**63), str(2**64), "12345678901234.123456789012", "70635299.5"]
).map(Number)  # fmt: skip
BOUNDARY_TEXTS = st.sampled_from(
    ["68500.0", " 68500.0", "68500.0 ", "6_8500", "NaN", "Infinity", "", "١٢", "1,5", "+1", "buy", "sell", "hold",
     "BTC/USD", "BTC/USDT", "ETH/USD", "XK2BTC/USD", "2024-05-27T12:43:11.798009Z", "2024-05-27T12:43:11.798009",
     "2013-09-09T23:59:59Z", "9999-12-31T23:59:59.999999Z", "2024-02-30T00:00:00Z", "2024-05-27T12:43:11.123456789Z",
     "2024-05-27T14:43:11+02:00", "trade", "ticker", "snapshot", "update", "limit", "market"]
)  # fmt: skip
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.decimals(allow_nan=False, allow_infinity=False).map(lambda d: Number(str(d)))
    | BOUNDARY_NUMBERS
    | st.text(max_size=20)
    | BOUNDARY_TEXTS
)
JSON_VALUES = json_values(JSON_SCALARS)
DEEP = st.integers(min_value=1, max_value=100_000).map(lambda n: "[" * n + "1" + "]" * n)


def _dumps(value: Any) -> str:
    """JSON where a :class:`Number` is written bare (its text), everything else as json.dumps does."""
    if isinstance(value, Number):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dumps(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _loads(text: str) -> Any:
    """The oracle's reading of a message: numbers as Decimals of their text (never a float)."""
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def _recorded(name: str) -> dict[str, Any]:
    """A real message with its numbers as :class:`Number` (their text kept)."""
    message: dict[str, Any] = json.loads(SNIPPETS[name], parse_float=Number, parse_int=Number)
    return message


@st.composite
def mutated_messages(draw: st.DrawFn) -> str:
    """A real message with 0 to 3 changes: a field of one element deleted, set to a boundary value or of
    another type; the channel, the type or the whole ``data`` replaced; an element duplicated."""
    message = _recorded(draw(st.sampled_from(DATA_MESSAGES)))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["delete", "set", "set", "set", "channel", "type", "data", "copy"]))
        data = message.get("data")
        element = data[draw(st.integers(0, len(data) - 1))] if isinstance(data, list) and data else None
        field = draw(st.sampled_from(TRADE_FIELDS + TICKER_FIELDS))
        if op == "delete" and isinstance(element, dict):
            element.pop(field, None)
        elif op == "set" and isinstance(element, dict):
            element[field] = draw(BOUNDARY_NUMBERS | BOUNDARY_TEXTS | JSON_SCALARS)
        elif op == "channel":
            message["channel"] = draw(
                st.sampled_from(["trade", "ticker", "book", "heartbeat", "", "Trade"]) | JSON_SCALARS
            )
        elif op == "type":
            message["type"] = draw(st.sampled_from(["snapshot", "update", "delta"]) | JSON_SCALARS)
        elif op == "data":
            message["data"] = draw(JSON_VALUES)
        elif op == "copy" and isinstance(data, list) and isinstance(element, dict):
            data.append(dict(element))
    return _dumps(message)


@st.composite
def kraken_shaped(draw: st.DrawFn) -> str:
    """A channel message whose elements hold (some of) the trade or ticker keys, each any JSON value."""
    fields = draw(st.sampled_from([TRADE_FIELDS, TICKER_FIELDS]))
    values = BOUNDARY_NUMBERS | BOUNDARY_TEXTS | JSON_VALUES
    elements = [
        {k: draw(values) for k in draw(st.lists(st.sampled_from(fields), unique=True))}
        for _ in range(draw(st.integers(0, 3)))
    ]
    channel = draw(st.sampled_from(["trade", "ticker", "heartbeat", "status", "book"]) | st.text(max_size=6))
    return _dumps({"channel": channel, "type": draw(st.sampled_from(["snapshot", "update"])), "data": elements})


# --- checks -------------------------------------------------------------------------------------------
def _parse(payloads: list[bytes], is_sample_data: bool) -> tuple[list[RawFrame], ParsedBatch]:
    """Each frame gets its own receive time, so a row leads back to its frame."""
    frames = [RawFrame(p, RECEIVED_US + i) for i, p in enumerate(payloads)]
    return frames, parser(SYMBOLS, is_sample_data=is_sample_data).parse(frames)


def _rows_by_frame(batch: pa.RecordBatch | None) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    if batch is None:
        return out
    received = batch.column("ingestion_timestamp").cast(pa.int64()).to_pylist()
    for row, at in zip(batch.to_pylist(), received, strict=True):
        out.setdefault(at, []).append(row)
    return out


def _assert_accounted_and_exact(frames: list[RawFrame], parsed: ParsedBatch) -> None:
    trades = _rows_by_frame(parsed.records.get(RecordKind.TRADES))
    quotes = _rows_by_frame(parsed.records.get(RecordKind.QUOTES))
    rejected = {r.frame.received_at_us for r in parsed.rejected}
    assert len(rejected) == len(parsed.rejected), "a frame is rejected at most once"
    assert all(r.reason.value and r.detail for r in parsed.rejected)
    stored = set(trades) | set(quotes)
    assert not stored & rejected, "a frame is rows or a reject, never both"
    assert len(stored) + len(rejected) + parsed.control == len(frames), "every frame accounted for once"
    by_received = {f.received_at_us: f for f in frames}
    for at, rows in trades.items():
        message = _loads(by_received[at].payload.decode())
        assert message["channel"] == "trade" and message["type"] in ("snapshot", "update")
        assert len(rows) == len(message["data"]), "a message's trades are stored together"
        for row, element in zip(rows, message["data"], strict=True):
            _assert_trade(row, element, at, message["type"])
    for at, rows in quotes.items():
        message = _loads(by_received[at].payload.decode())
        assert message["channel"] == "ticker" and len(rows) == len(message["data"])
        for row, element in zip(rows, message["data"], strict=True):
            assert row["symbol"] == element["symbol"] in SYMBOLS and row["source_sequence"] == at
            values = [Decimal(element[k]) for k in ("bid", "bid_qty", "ask", "ask_qty")]
            assert [row["bid_price"], row["bid_size"], row["ask_price"], row["ask_size"]] == values
            assert all(v > 0 for v in values) and values[0] < values[2]
            if element.get("timestamp") is not None:  # null reads as absent
                assert row["timestamp"] == datetime.fromisoformat(element["timestamp"])
            else:
                assert row["timestamp"] is None


def _assert_trade(row: dict[str, Any], element: dict[str, Any], received: int, message_type: str) -> None:
    assert row["symbol"] == element["symbol"] in SYMBOLS
    assert row["price"] == Decimal(element["price"]) > 0 and row["quantity"] == Decimal(element["qty"]) > 0
    assert row["trade_id"] == str(element["trade_id"]) and row["source_sequence"] == element["trade_id"] >= 0
    assert row["side"] == {"buy": "BUY", "sell": "SELL"}[element["side"]]
    stamp = datetime.fromisoformat(element["timestamp"])
    assert row["timestamp"] == stamp
    us = int(pa.scalar(row["timestamp"], pa.timestamp("us", "UTC")).cast(pa.int64()).as_py())
    assert LAUNCH_US <= us <= received + MAX_FUTURE_US
    vendor = dict(row["vendor_data"])
    assert vendor["type"] == message_type and vendor.get("ord_type") == element.get("ord_type")


# --- the WebSocket parser -----------------------------------------------------------------------------
@PROPERTIES
@given(st.lists(st.binary(max_size=300) | DEEP.map(str.encode), min_size=1, max_size=8), st.booleans())
def test_any_bytes_are_rows_rejects_or_control(payloads: list[bytes], is_sample_data: bool) -> None:
    _assert_accounted_and_exact(*_parse(payloads, is_sample_data))


@PROPERTIES
@given(st.lists(JSON_VALUES.map(_dumps), min_size=1, max_size=6), st.booleans())
def test_any_json_value_is_rows_rejects_or_control(payloads: list[str], is_sample_data: bool) -> None:
    _assert_accounted_and_exact(*_parse([p.encode() for p in payloads], is_sample_data))


@PROPERTIES
@given(st.lists(kraken_shaped(), min_size=1, max_size=6), st.booleans())
def test_any_kraken_shaped_message_is_rows_rejects_or_control(payloads: list[str], is_sample_data: bool) -> None:
    _assert_accounted_and_exact(*_parse([p.encode() for p in payloads], is_sample_data))


@PROPERTIES
@given(st.lists(mutated_messages(), min_size=1, max_size=8), st.booleans())
def test_mutated_real_messages_are_stored_exactly_or_quarantined(payloads: list[str], is_sample_data: bool) -> None:
    # Among the real messages, so that a batch mixes good and bad ones.
    frames, parsed = _parse([*(m.encode() for m in RECORDED), *(p.encode() for p in payloads)], True)
    _assert_accounted_and_exact(frames, parsed)
    _assert_accounted_and_exact(*_parse([p.encode() for p in payloads], is_sample_data))


def test_the_real_messages_themselves_parse() -> None:
    frames, parsed = _parse([m.encode() for m in RECORDED], is_sample_data=True)
    assert parsed.rows(RecordKind.TRADES) == 4 and parsed.rows(RecordKind.QUOTES) == 2
    assert parsed.control == 6 and len(parsed.rejected) == 3  # two error replies, one book update
    _assert_accounted_and_exact(frames, parsed)


# --- the REST parser ----------------------------------------------------------------------------------
REST_ROWS: list[list[Any]] = json.loads(REST_PAGE, parse_float=Number)["result"]["XBTUSDT"]


@st.composite
def rest_pages(draw: st.DrawFn) -> bytes:
    rows: list[Any] = []
    for _ in range(draw(st.integers(0, 5))):
        row: Any = list(draw(st.sampled_from(REST_ROWS)))
        for _ in range(draw(st.integers(0, 3))):
            op = draw(st.sampled_from(["set", "set", "pop", "replace"]))
            if op == "set" and isinstance(row, list) and row:
                row[draw(st.integers(0, len(row) - 1))] = draw(BOUNDARY_NUMBERS | BOUNDARY_TEXTS | JSON_SCALARS)
            elif op == "pop" and isinstance(row, list) and row:
                row.pop()
            elif op == "replace":
                row = draw(JSON_VALUES)
        rows.append(row)
    last = draw(st.sampled_from(['"1762820035982277754"', '""', "null", "1"]))
    return ('{"error":[],"result":{"XBTUSDT":' + _dumps(rows) + ',"last":' + last + "}}").encode()


def _assert_rest(payload: bytes, received_us: int) -> None:
    try:
        page = parse_trades_page(payload, "BTC/USDT", received_at_us=received_us, instrument=Instrument("BTC", "USDT"))
    except SourceError:
        return  # the documented answer to a body that is not a Kraken answer
    if page.errors:
        return
    fetched = page.fetched
    assert fetched is not None
    result = {k: v for k, v in _loads(payload.decode())["result"].items() if k != "last"}
    (rows_in,) = result.values()  # one pair (else SourceError above), whatever its name
    assert len(fetched.ids) + len(fetched.parsed.rejected) == len(rows_in)
    assert (fetched.batch is None) == (not fetched.ids)
    if fetched.batch is None:
        return
    assert fetched.batch.column("source_sequence").to_pylist() == fetched.ids
    oracle = [r for r in rows_in if isinstance(r, list) and len(r) >= 7]
    for row in fetched.batch.to_pylist():
        assert any(_rest_row_is(row, r, received_us) for r in oracle), row


def _rest_row_is(row: dict[str, Any], raw: list[Any], received_us: int) -> bool:
    """The row stores exactly ``raw`` (what a valid REST row can hold)."""
    try:
        seconds = Decimal(raw[2])
        us = int((seconds * 1_000_000).to_integral_value(rounding="ROUND_FLOOR"))
        stored = int(pa.scalar(row["timestamp"], pa.timestamp("us", "UTC")).cast(pa.int64()).as_py())
        return bool(
            row["price"] == Decimal(raw[0]) > 0
            and row["quantity"] == Decimal(raw[1]) > 0
            and stored == us
            and LAUNCH_US <= us <= received_us + MAX_FUTURE_US
            and row["side"] == {"b": "BUY", "s": "SELL"}[raw[3]]
            and row["source_sequence"] == raw[6]
            and Decimal(dict(row["vendor_data"])["rest_time"]) == seconds
        )
    except (ArithmeticError, KeyError, TypeError, ValueError, IndexError):
        return False


@PROPERTIES
@given(st.binary(max_size=400) | DEEP.map(str.encode))
def test_rest_any_bytes_are_rows_rejects_or_a_source_error(payload: bytes) -> None:
    _assert_rest(payload, RECEIVED_US)


@PROPERTIES
@given(JSON_VALUES.map(lambda v: _dumps({"error": [], "result": {"XBTUSDT": v, "last": "1"}}).encode()))
def test_rest_any_json_rows_are_rows_rejects_or_a_source_error(payload: bytes) -> None:
    _assert_rest(payload, RECEIVED_US)


@PROPERTIES
@given(rest_pages(), st.integers(min_value=0, max_value=2 * 1_762_820_100_000_000))
def test_rest_mutated_real_pages_are_stored_exactly_or_quarantined(payload: bytes, received_us: int) -> None:
    _assert_rest(payload, received_us)
