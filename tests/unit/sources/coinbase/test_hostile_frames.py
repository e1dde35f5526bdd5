"""Every bad-frame kind the emulator injects, built from a real Coinbase message, is quarantined by the
Coinbase parser with the reason :data:`k2.emulator.faults.EXPECTED_REASON` names, never raises and
never becomes a row: the emulator's Coinbase faults and the parser agree (the end-to-end tests count
on it)."""

from __future__ import annotations

import json

import pytest

from k2.emulator.coinbase import CoinbaseProtocol
from k2.emulator.faults import CROSSED_QUOTE, EXPECTED_REASON, OutFrame
from k2.emulator.recording import RecordedFrame
from k2.feed.stamp import parse_canonical
from k2.schema.kinds import RecordKind
from k2.sources import RawFrame
from tests.conftest import FIXTURES

LINES = (FIXTURES / "coinbase" / "exchange_ws_frames.jsonl").read_bytes().splitlines()
MATCH, TICKER = LINES[6], LINES[7]
RECEIVED_US = 1_618_677_817_129_516
PROTOCOL = CoinbaseProtocol()


def _routed(line: bytes) -> OutFrame:
    out = PROTOCOL.route(RecordedFrame(RECEIVED_US, line.decode()))
    assert out.stream is not None
    return out


@pytest.mark.parametrize("kind", sorted(EXPECTED_REASON))
@pytest.mark.parametrize("is_sample_data", [False, True])
def test_each_injected_kind_is_quarantined_with_its_reason(kind: str, is_sample_data: bool) -> None:
    source = _routed(TICKER if kind == CROSSED_QUOTE else MATCH)
    bad = PROTOCOL.bad_frame(source, kind)
    assert bad.stream == source.stream and bad.kind == kind and bad.raw != source.raw
    frames = [RawFrame(MATCH, RECEIVED_US), RawFrame(bad.raw, RECEIVED_US), RawFrame(TICKER, RECEIVED_US)]
    parsed = parse_canonical(
        "coinbase", frames, symbols=["SKL-BTC"], kinds=(RecordKind.TRADES, RecordKind.QUOTES),
        is_sample_data=is_sample_data,
    )  # fmt: skip
    assert [(r.reason, r.frame.payload) for r in parsed.rejected] == [(EXPECTED_REASON[kind], bad.raw)]
    assert parsed.records[RecordKind.TRADES].column("trade_id").to_pylist() == ["280232"]
    assert parsed.records[RecordKind.QUOTES].column("source_sequence").to_pylist() == [177_100_030]


def test_the_mutations_change_one_field_of_the_real_message() -> None:
    match = json.loads(MATCH)
    for kind, field in (("trade_time_2_63", "time"), ("price_38_digits", "price"), ("trade_id_negative", "trade_id"),
                        ("unsubscribed_stream", "product_id"), ("event_not_string", "type")):  # fmt: skip
        changed = json.loads(PROTOCOL.bad_frame(_routed(MATCH), kind).raw)
        assert {k for k in match if changed.get(k) != match[k]} == {field}, kind
    assert json.loads(PROTOCOL.bad_frame(_routed(MATCH), "trade_time_2_63").raw)["time"] == (
        "+294247-01-10T04:00:54.775808Z"
    )  # 2^63 µs after the epoch
    crossed = json.loads(PROTOCOL.bad_frame(_routed(TICKER), CROSSED_QUOTE).raw)
    assert (crossed["best_bid"], crossed["best_ask"]) == ("0.00001305", "0.00001303")
    assert "best_bid_size" not in crossed  # sizes are swapped only when the ticker has them


def test_record_kinds_of_routed_frames() -> None:
    assert PROTOCOL.record_kind(_routed(MATCH)) is RecordKind.TRADES
    assert PROTOCOL.record_kind(_routed(TICKER)) is RecordKind.QUOTES
    assert PROTOCOL.record_kind(_routed(LINES[5])) is None  # l2update
    assert PROTOCOL.route(RecordedFrame(RECEIVED_US, LINES[3].decode())).stream is None  # a recorded ack
