"""Fault injection, pure: decoding for routing, duplicates, reordering, and bad frames the parser rejects."""

from __future__ import annotations

import json
from typing import Any

import pytest

from k2.emulator.faults import (
    ADVERSARIAL_KINDS,
    CROSSED_QUOTE,
    DUPLICATE,
    EXPECTED_REASON,
    FOREIGN_PREFIX,
    FRAME,
    MALFORMED_KINDS,
    Faults,
    OutFrame,
    bad_frame,
    decode_frame,
    replay_frames,
)
from k2.emulator.recording import BUNDLED_BINANCE_TRADES, RecordedFrame, read_recording
from k2.errors import ConfigError
from k2.feed.stamp import parse_canonical
from k2.schema.kinds import RecordKind
from k2.sources import RawFrame, RejectReason

FIRST = (
    '{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255343,"s":"BTCUSDT","t":3735683259,'
    '"p":"61837.63000000","q":"0.02000000","T":1723161255342,"m":true,"M":true}}'
)
FIRST_DATA = FIRST[len('{"stream":"btcusdt@trade","data":') : -1]


def _recording(n: int) -> list[RecordedFrame]:
    frames = []
    for frame in read_recording(BUNDLED_BINANCE_TRADES):
        frames.append(frame)
        if len(frames) == n:
            break
    return frames


def _trade_id(out: OutFrame) -> int:
    return int(json.loads(out.raw)["t"])


def test_combined_frame_keeps_its_bytes_and_slices_data_verbatim() -> None:
    out = decode_frame(RecordedFrame(1723161255343000, FIRST))
    assert out == OutFrame("btcusdt@trade", FIRST.encode(), FIRST_DATA.encode(), 1723161255343000, FRAME)


def test_raw_event_is_routed_by_symbol_and_event_and_wrapped_for_combined_clients() -> None:
    out = decode_frame(RecordedFrame(7, FIRST_DATA))
    assert out.stream == "btcusdt@trade"
    assert out.raw == FIRST_DATA.encode()
    assert out.combined == FIRST.encode()


@pytest.mark.parametrize("text", ['{"result":null,"id":1}', "not json", "[1,2]"])
def test_frames_that_cannot_be_routed_have_no_stream(text: str) -> None:
    assert decode_frame(RecordedFrame(0, text)).stream is None


def test_no_faults_replays_the_recording_unchanged() -> None:
    recording = _recording(50)
    injected: dict[str, int] = {}
    out = list(replay_frames(recording, Faults(), injected))
    assert [o.combined.decode() for o in out] == [r.frame for r in recording]
    assert [o.recv_us for o in out] == [r.recv_us for r in recording]
    assert injected == {}


def test_duplicate_every_k_sends_those_frames_twice() -> None:
    recording = _recording(10)
    ids = [_trade_id(decode_frame(r)) for r in recording]
    injected: dict[str, int] = {}
    out = list(replay_frames(recording, Faults(duplicate_every=4), injected))
    expected = [*ids[:4], ids[3], *ids[4:8], ids[7], *ids[8:]]
    assert [_trade_id(o) for o in out] == expected
    assert [o.kind for o in out].count(DUPLICATE) == 2
    assert out[4].kind == DUPLICATE
    assert out[4].combined == out[3].combined
    assert injected == {"duplicate": 2}


def test_reorder_every_k_swaps_frame_k_with_the_next() -> None:
    recording = _recording(7)
    ids = [_trade_id(decode_frame(r)) for r in recording]
    injected: dict[str, int] = {}
    out = list(replay_frames(recording, Faults(reorder_every=3), injected))
    assert [_trade_id(o) for o in out] == [ids[0], ids[1], ids[3], ids[2], ids[4], ids[6], ids[5]]
    assert all(o.kind == FRAME for o in out)
    assert injected == {"reorder": 2}


def test_reorder_at_the_last_frame_has_nothing_to_swap_with() -> None:
    recording = _recording(3)
    injected: dict[str, int] = {}
    out = list(replay_frames(recording, Faults(reorder_every=3), injected))
    assert [o.combined.decode() for o in out] == [r.frame for r in recording]
    assert injected == {}


def test_malformed_every_k_inserts_bad_frames_cycling_through_the_kinds() -> None:
    recording = _recording(14)
    injected: dict[str, int] = {}
    out = list(replay_frames(recording, Faults(malformed_every=2), injected))
    assert len(out) == 14 + 7
    bad = [o for o in out if o.kind != FRAME]
    assert [o.kind for o in bad] == [*MALFORMED_KINDS, MALFORMED_KINDS[0]]
    assert [i for i, o in enumerate(out) if o.kind != FRAME] == [2, 5, 8, 11, 14, 17, 20]
    assert injected == {**dict.fromkeys(MALFORMED_KINDS, 1), "malformed_json": 2}


RECEIVED_US = 1723161255400000  # just after FIRST's event time


@pytest.mark.parametrize("kind", [k for k in EXPECTED_REASON if k != CROSSED_QUOTE])
@pytest.mark.parametrize("form", ["combined", "raw"])
def test_each_bad_frame_kind_is_rejected_by_the_parser_with_its_expected_reason(kind: str, form: str) -> None:
    source = decode_frame(RecordedFrame(1723161255343000, FIRST))
    bad = bad_frame(source, kind)
    assert bad.stream == "btcusdt@trade"  # routed like the real frame, whatever it names
    payload = bad.combined if form == "combined" else bad.raw
    # Parsed alongside the good frame it was built from: only the bad one is rejected.
    good = source.combined if form == "combined" else source.raw
    for is_sample_data in (True, False):
        batch = parse_canonical(
            "binance",
            [RawFrame(good, RECEIVED_US), RawFrame(payload, RECEIVED_US)],
            symbols=["BTCUSDT", "ETHUSDT"],
            first_sequence=1,
            is_sample_data=is_sample_data,
        )
        assert [(r.reason, r.frame.payload) for r in batch.rejected] == [(EXPECTED_REASON[kind], payload)]
        assert batch.records["trades"].column("trade_id").to_pylist() == ["3735683259"]


def test_malformed_kinds_are_named_after_their_reason_and_adversarial_kinds_map_to_one() -> None:
    assert all(EXPECTED_REASON[k] == RejectReason(k) for k in MALFORMED_KINDS)
    assert set(EXPECTED_REASON) == {*MALFORMED_KINDS, *ADVERSARIAL_KINDS, CROSSED_QUOTE}
    assert len(ADVERSARIAL_KINDS) >= 15


def test_adversarial_every_k_cycles_through_the_adversarial_kinds_after_the_malformed_one() -> None:
    recording = _recording(40)
    injected: dict[str, int] = {}
    out = list(replay_frames(recording, Faults(malformed_every=20, adversarial_every=2), injected))
    bad = [o.kind for o in out if o.kind != FRAME]
    kinds = list(ADVERSARIAL_KINDS)
    assert bad[:9] == kinds[:9]  # positions 2, 4, ..., 18
    assert bad[9:11] == ["malformed_json", kinds[9]]  # position 20: the malformed frame first
    assert len(out) == 40 + 20 + 2
    assert sum(injected.values()) == 22


def test_adversarial_frames_are_built_from_the_real_frame() -> None:
    source = decode_frame(RecordedFrame(0, FIRST))
    data = json.loads(FIRST_DATA)

    def mutated(kind: str) -> Any:
        return json.loads(bad_frame(source, kind).raw)

    assert mutated("data_not_object") == [data]
    assert json.loads(bad_frame(source, "data_not_object").combined) == {"stream": "btcusdt@trade", "data": [data]}
    assert mutated("event_not_string") == {**data, "e": ["trade"]}
    assert mutated("price_space") == {**data, "p": " 61837.63000000"}
    assert mutated("price_underscore") == {**data, "p": "6_1837.63000000"}
    assert mutated("price_non_ascii_digits") == {**data, "p": "٦١٨٣٧.٦٣٠٠٠٠٠٠"}
    assert mutated("price_50_digits") == {**data, "p": "6183761837" * 5 + ".63000000"}
    assert mutated("price_38_digits") == {**data, "p": "1" * 38}
    assert mutated("trade_id_2_63") == {**data, "t": 2**63}
    assert mutated("trade_time_2_63") == {**data, "T": 2**63}
    assert mutated("trade_time_int64_max") == {**data, "T": 2**63 - 1}
    assert mutated("trade_time_zero") == {**data, "T": 0}
    assert mutated("trade_time_negative") == {**data, "T": -1723161255342}
    assert mutated("trade_time_far_future")["T"] == 1723161255342 + 300 * 365 * 86_400_000
    assert mutated("trade_time_after_9999")["T"] > 253_402_300_799_999
    assert mutated("trade_id_negative") == {**data, "t": -3735683259}
    foreign = {**data, "s": FOREIGN_PREFIX + "BTCUSDT"}
    assert mutated("unsubscribed_stream") == mutated("stream_symbol_mismatch") == foreign
    assert json.loads(bad_frame(source, "unsubscribed_stream").combined)["stream"] == "xk2btcusdt@trade"
    assert json.loads(bad_frame(source, "stream_symbol_mismatch").combined)["stream"] == "btcusdt@trade"
    with pytest.raises(ValueError, match="unknown bad-frame kind"):
        bad_frame(source, "nonsense")


def test_bad_frames_are_built_from_the_real_frame() -> None:
    source = decode_frame(RecordedFrame(0, FIRST))
    data = json.loads(FIRST_DATA)
    assert bad_frame(source, "malformed_json").raw == FIRST_DATA.encode()[: len(FIRST_DATA) // 2]
    assert json.loads(bad_frame(source, "missing_field").raw) == {k: v for k, v in data.items() if k != "p"}
    assert json.loads(bad_frame(source, "wrong_type").raw) == {**data, "t": "3735683259"}
    assert json.loads(bad_frame(source, "invalid_number").raw) == {**data, "p": "not-a-number"}
    assert json.loads(bad_frame(source, "non_positive").raw) == {**data, "p": "-61837.63000000"}
    assert json.loads(bad_frame(source, "unknown_event").raw) == {**data, "e": "unknownEvent"}
    envelope = json.loads(bad_frame(source, "wrong_type").combined)
    assert envelope == {"stream": "btcusdt@trade", "data": {**data, "t": "3735683259"}}


def test_faults_validate_and_normalise() -> None:
    assert Faults(disconnect_after=(30, 10, 30)).disconnect_after == (10, 30)
    assert not Faults().any
    assert Faults(duplicate_every=3).any
    with pytest.raises(ConfigError, match="positive"):
        Faults(disconnect_after=(0,))
    with pytest.raises(ConfigError, match="duplicate_every"):
        Faults(duplicate_every=-1)
    assert Faults(adversarial_every=5).any
    with pytest.raises(ConfigError, match="adversarial_every"):
        Faults(adversarial_every=-1)


BOOK_TICKER = (
    '{"stream":"btcusdt@bookTicker","data":{"u":50093239212,"s":"BTCUSDT","b":"61837.63000000",'
    '"B":"3.78826000","a":"61837.64000000","A":"1.54698000"}}'
)  # the first bookTicker of the bundled session recording


def test_a_crossed_quote_is_the_real_quote_with_bid_and_ask_swapped_and_is_quarantined() -> None:
    source = decode_frame(RecordedFrame(RECEIVED_US, BOOK_TICKER))
    bad = bad_frame(source, CROSSED_QUOTE)
    assert bad.stream == "btcusdt@bookTicker"
    data = json.loads(bad.raw)
    assert (data["b"], data["a"]) == ("61837.64000000", "61837.63000000")
    parsed = parse_canonical(
        "binance", [RawFrame(source.combined, RECEIVED_US), RawFrame(bad.combined, RECEIVED_US)],
        symbols=["BTCUSDT"], kinds=[RecordKind.QUOTES], is_sample_data=True,
    )  # fmt: skip
    assert [(r.reason, r.frame.payload) for r in parsed.rejected] == [(RejectReason.CROSSED_BOOK, bad.combined)]
    assert parsed.records[RecordKind.QUOTES].column("source_sequence").to_pylist() == [50093239212]


def test_crossed_every_k_follows_every_kth_book_ticker_and_bad_trade_kinds_only_trades() -> None:
    frames = [RecordedFrame(i, BOOK_TICKER if i % 2 else FIRST) for i in range(1, 9)]  # 4 quotes, 4 trades
    injected: dict[str, int] = {}
    out = list(replay_frames(frames, Faults(crossed_every=2, malformed_every=4), injected))
    assert [o.kind for o in out if o.kind != FRAME] == [CROSSED_QUOTE, CROSSED_QUOTE, "malformed_json"]
    assert injected == {CROSSED_QUOTE: 2, "malformed_json": 1}
