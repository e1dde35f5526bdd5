"""Issue 9, defects 1, 2 and the parser half of 4: each hostile frame (a real recorded frame with one
field mutated) is quarantined with its reason, never raises, and never becomes a row.

On the code before validation at the edge (4af7975) every case here failed: some raised out of the
parser (RecursionError, decimal.InvalidOperation, OverflowError, msgspec.ValidationError), the others
were stored as good rows (a 38-digit price as a wrong number, T = 2^63-1 as 1969, a foreign stream
under its symbol, trade times of 0, negative or centuries ahead, a negative trade id).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from k2.config import K2Settings, SourceSettings, ValidationSettings
from k2.schema.kinds import RecordKind
from k2.sources import ParsedBatch, RawFrame, RejectReason, load_venue
from k2.sources.binance import BinanceParser, BinanceSymbols
from tests.conftest import FIXTURES, binance_parser, rest_trades

BINANCE = FIXTURES / "binance"
# Real frames (tests/fixtures/binance/README.md): a BTCUSDT combined-stream frame and a REST page.
REAL = (BINANCE / "trade_ws_combined.jsonl").read_bytes().splitlines()[0]
REAL_NEXT = (BINANCE / "trade_ws_combined.jsonl").read_bytes().splitlines()[1]
REST_PAGE: list[dict[str, Any]] = json.loads((BINANCE / "rest_historical_trades.json").read_bytes())
RECEIVED_US = 1_723_161_256_600_123  # the recorded receive time of REAL (expected.json)
T = 1723161255342  # REAL's trade time (ms)
YEAR_10000_MS = 253_402_300_800_000


def _adapter(is_sample_data: bool = False) -> BinanceParser:
    return binance_parser(["BTCUSDT", "ETHUSDT"], is_sample_data=is_sample_data)


def _mutated(change: Callable[[dict[str, Any]], Any]) -> bytes:
    """REAL with ``change`` applied to its envelope (which holds ``data``); returns the new frame."""
    envelope = json.loads(REAL)
    change(envelope)
    return json.dumps(envelope, ensure_ascii=False).encode()


def _set(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda env: env["data"].update(fields)


def _parse(payload: bytes, *, is_sample_data: bool = False) -> ParsedBatch:
    """The hostile frame between two real ones, as a batch arrives."""
    frames = [RawFrame(REAL, RECEIVED_US), RawFrame(payload, RECEIVED_US), RawFrame(REAL_NEXT, RECEIVED_US)]
    return _adapter(is_sample_data).parse(frames)


def _assert_quarantined(parsed: ParsedBatch, payload: bytes, reason: RejectReason) -> None:
    assert [(r.reason, r.frame.payload) for r in parsed.rejected] == [(reason, payload)]
    assert parsed.rejected[0].detail
    # Nothing of the hostile frame is stored: only the two real trades, exactly as recorded.
    rows = parsed.records[RecordKind.TRADES].to_pylist()
    assert [r["trade_id"] for r in rows] == ["3735683259", "3735683305"]
    assert [r["price"] for r in rows] == [Decimal("61837.63000000"), Decimal("61828.02000000")]


HOSTILE: dict[str, tuple[Callable[[dict[str, Any]], Any], RejectReason]] = {
    # defect 1: a single frame raised out of the parser
    "data_not_an_object": (lambda env: env.update(data=[env["data"]]), RejectReason.WRONG_TYPE),
    "data_a_string": (lambda env: env.update(data="trade"), RejectReason.WRONG_TYPE),
    "data_null": (lambda env: env.update(data=None), RejectReason.WRONG_TYPE),
    "e_not_a_string": (_set(e=["trade"]), RejectReason.WRONG_TYPE),
    "e_a_number": (_set(e=1), RejectReason.WRONG_TYPE),
    "price_with_a_space": (_set(p=" 61837.63000000"), RejectReason.INVALID_NUMBER),
    "price_with_trailing_space": (_set(p="61837.63000000 "), RejectReason.INVALID_NUMBER),
    "price_with_an_underscore": (_set(p="61_837.63000000"), RejectReason.INVALID_NUMBER),
    "price_in_arabic_indic_digits": (_set(p="٦١٨٣٧.٦٣"), RejectReason.INVALID_NUMBER),
    "price_in_fullwidth_digits": (_set(p="６１８３７.６３"), RejectReason.INVALID_NUMBER),
    "price_of_50_digits": (_set(p="6183761837" * 5), RejectReason.INVALID_NUMBER),
    "trade_id_2_63": (_set(t=2**63), RejectReason.OUT_OF_RANGE),
    "trade_id_2_64": (_set(t=2**64), RejectReason.OUT_OF_RANGE),
    "trade_time_2_63": (_set(T=2**63), RejectReason.OUT_OF_RANGE),
    "event_time_2_63": (_set(E=2**63), RejectReason.OUT_OF_RANGE),
    "trade_time_after_year_9999": (_set(T=YEAR_10000_MS + T), RejectReason.OUT_OF_RANGE),
    # defect 2: absurd values were stored as good
    "trade_time_0": (_set(T=0), RejectReason.OUT_OF_RANGE),
    "trade_time_negative": (_set(T=-T), RejectReason.OUT_OF_RANGE),
    "trade_time_centuries_ahead": (_set(T=T + 300 * 365 * 86_400_000), RejectReason.OUT_OF_RANGE),
    "trade_time_int64_max": (_set(T=2**63 - 1), RejectReason.OUT_OF_RANGE),
    # pyarrow's string->decimal128(38,12) cast wraps this one silently (to 59431335934331412343743812.65...)
    "price_of_38_digits": (_set(p="1" * 38), RejectReason.INVALID_NUMBER),
    "price_of_27_integer_digits": (_set(p="1" * 27), RejectReason.INVALID_NUMBER),
    "unsubscribed_stream": (
        lambda env: env.update(stream="bnbusdt@trade", data={**env["data"], "s": "BNBUSDT"}),
        RejectReason.UNSUBSCRIBED,
    ),
    "symbol_contradicts_stream": (_set(s="ETHUSDT"), RejectReason.UNSUBSCRIBED),
    # defect 4, the parser's half: one negative id was taken as a venue reset
    "trade_id_negative": (_set(t=-3735683259), RejectReason.OUT_OF_RANGE),
    "buyer_order_id_negative": (_set(b=-1, a=20720542592), RejectReason.OUT_OF_RANGE),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_frame_is_quarantined_with_its_reason_and_nothing_is_stored(case: str) -> None:
    change, reason = HOSTILE[case]
    payload = _mutated(change)
    _assert_quarantined(_parse(payload), payload, reason)
    _assert_quarantined(_parse(payload, is_sample_data=True), payload, reason)


@pytest.mark.parametrize("where", [b'"data":', b'"p":'])
def test_json_nested_too_deep_for_the_decoder_is_quarantined_not_raised(where: bytes) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    head, _, tail = REAL.partition(where)
    payload = head + where + deep + b"," + tail.partition(b",")[2]
    expected = RejectReason.MALFORMED_JSON
    _assert_quarantined(_parse(payload), payload, expected)


@pytest.mark.parametrize("change", ["no stream", "stream null", "another stream"])
def test_a_parser_of_one_stream_quarantines_a_frame_that_does_not_name_it(change: str) -> None:
    """One symbol, one kind: the clean batch path decodes frames with a union tagged by the stream
    names, and a union of one struct would not require the tag. The frame must still be quarantined."""
    envelope = json.loads(REAL)
    if change == "no stream":
        del envelope["stream"]
    else:
        envelope["stream"] = None if change == "stream null" else "ethusdt@trade"
    payload = json.dumps(envelope).encode()
    parser = binance_parser(["BTCUSDT"], is_sample_data=True)
    frames = [RawFrame(REAL, RECEIVED_US), RawFrame(payload, RECEIVED_US), RawFrame(REAL_NEXT, RECEIVED_US)]
    parsed = parser.parse(frames)
    reason = {"no stream": RejectReason.MISSING_FIELD, "stream null": RejectReason.MISSING_FIELD}
    assert [(r.reason, r.frame.payload) for r in parsed.rejected] == [
        (reason.get(change, RejectReason.UNSUBSCRIBED), payload)
    ]
    assert parsed.records[RecordKind.TRADES]["trade_id"].to_pylist() == ["3735683259", "3735683305"]


def test_a_raw_event_of_an_unsubscribed_symbol_is_quarantined() -> None:
    data = json.loads(REAL)["data"]
    payload = json.dumps({**data, "s": "BNBUSDT"}).encode()
    _assert_quarantined(_parse(payload), payload, RejectReason.UNSUBSCRIBED)


def test_live_frames_older_than_the_max_age_are_quarantined_but_replays_are_not() -> None:
    day_old = _mutated(_set(T=T - 86_400_000, E=T - 86_400_000))
    _assert_quarantined(_parse(day_old), day_old, RejectReason.OUT_OF_RANGE)
    replayed = _parse(day_old, is_sample_data=True)  # a recording is old by design
    assert replayed.rejected == [] and replayed.rows(RecordKind.TRADES) == 3


def test_the_window_edges_are_inclusive_and_exact() -> None:
    """max_future_s = 300 s and max_age_s = 3600 s (the defaults), in Binance's milliseconds."""
    latest_ms = (RECEIVED_US + 300_000_000) // 1000
    oldest_ms = -(-(RECEIVED_US - 3_600_000_000) // 1000)
    for ms, stored in ((latest_ms, True), (latest_ms + 1, False), (oldest_ms, True), (oldest_ms - 1, False)):
        parsed = _adapter().parse([RawFrame(_mutated(_set(T=ms, E=ms)), RECEIVED_US)])
        assert parsed.rows(RecordKind.TRADES) == int(stored), ms


def test_the_window_comes_from_source_validation_settings() -> None:
    settings = K2Settings(source=SourceSettings(validation=ValidationSettings(max_future_s=0, max_age_s=None)))
    adapter = load_venue("binance").build_parser(
        settings.source.symbols, [RecordKind.TRADES], rules=BinanceSymbols(), validation=settings.source.validation,
        is_sample_data=False,
    )  # fmt: skip
    ahead = _mutated(_set(T=RECEIVED_US // 1000 + 1))
    day_old = _mutated(_set(T=T - 86_400_000, E=T - 86_400_000))
    parsed = adapter.parse([RawFrame(ahead, RECEIVED_US), RawFrame(day_old, RECEIVED_US)])
    assert [(r.reason, r.frame.payload) for r in parsed.rejected] == [(RejectReason.OUT_OF_RANGE, ahead)]
    assert parsed.rows(RecordKind.TRADES) == 1  # no maximum age: the day-old frame is stored


def _rest(page: list[dict[str, Any]]) -> Any:
    return rest_trades(
        json.dumps(page, ensure_ascii=False).encode(), "BTCUSDT", received_at_us=RECEIVED_US,
        first=1, sample=False)  # fmt: skip


REST_HOSTILE: dict[str, tuple[dict[str, Any], RejectReason]] = {
    "id_negative": ({"id": -3735683260}, RejectReason.OUT_OF_RANGE),
    "id_2_63": ({"id": 2**63}, RejectReason.OUT_OF_RANGE),
    "time_0": ({"time": 0}, RejectReason.OUT_OF_RANGE),
    "time_negative": ({"time": -T}, RejectReason.OUT_OF_RANGE),
    "time_int64_max": ({"time": 2**63 - 1}, RejectReason.OUT_OF_RANGE),
    "time_after_year_9999": ({"time": YEAR_10000_MS + T}, RejectReason.OUT_OF_RANGE),
    "time_centuries_ahead": ({"time": T + 300 * 365 * 86_400_000}, RejectReason.OUT_OF_RANGE),
    "price_with_a_space": ({"price": " 61837.64000000"}, RejectReason.INVALID_NUMBER),
    "price_with_an_underscore": ({"price": "61_837.64"}, RejectReason.INVALID_NUMBER),
    "price_in_arabic_indic_digits": ({"price": "٦١٨٣٧.٦٤"}, RejectReason.INVALID_NUMBER),
    "price_of_50_digits": ({"price": "6183761837" * 5}, RejectReason.INVALID_NUMBER),
    "price_of_38_digits": ({"price": "1" * 38}, RejectReason.INVALID_NUMBER),
    "quote_quantity_not_a_number": ({"quoteQty": "1e3"}, RejectReason.INVALID_NUMBER),
    "id_a_string": ({"id": "3735683260"}, RejectReason.WRONG_TYPE),
}


@pytest.mark.parametrize("case", list(REST_HOSTILE))
def test_hostile_rest_trade_is_quarantined_alone_and_its_page_still_parses(case: str) -> None:
    change, reason = REST_HOSTILE[case]
    first, second = REST_PAGE[0], {**REST_PAGE[1], **change}
    got = _rest([first, second])
    assert [(r.reason, json.loads(r.frame.payload)) for r in got.parsed.rejected] == [(reason, second)]
    assert got.ids == [3735683259]
    assert got.batch is not None and got.batch.column("trade_id").to_pylist() == ["3735683259"]


def test_a_rest_element_that_is_not_an_object_is_quarantined() -> None:
    got = _rest([REST_PAGE[0], [REST_PAGE[1]]])
    assert [r.reason for r in got.parsed.rejected] == [RejectReason.WRONG_TYPE]
    assert got.ids == [3735683259]


def test_rest_backfill_of_an_old_gap_has_no_max_age() -> None:
    """A gap found after a day of downtime is fetched a day late: its trades are old by design."""
    got = rest_trades(
        json.dumps(REST_PAGE[:2]).encode(), "BTCUSDT", received_at_us=RECEIVED_US + 86_400_000_000,
        first=1, sample=False)  # fmt: skip
    assert got.ids == [3735683259, 3735683260] and got.parsed.rejected == []
