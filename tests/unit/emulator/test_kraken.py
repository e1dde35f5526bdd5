"""The emulator's Kraken v2 protocol: the bundled recording's provenance, Kraken's replies byte for byte, routing,
bad frames and their reasons, the REST side's paging and errors, and the server over a real WebSocket (status
greeting, one ack per symbol, subscribed streams only, heartbeats when idle)."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from k2.emulator.faults import CROSSED_QUOTE, FRAME, MALFORMED_KINDS, Faults, OutFrame, expected_reasons, replay_frames
from k2.emulator.kraken import BUNDLED_KRAKEN, HEARTBEAT, STATUS, KrakenProtocol, route
from k2.emulator.kraken_faults import ADVERSARIAL_KINDS
from k2.emulator.kraken_recording import render
from k2.emulator.kraken_rest import KrakenRestEndpoints
from k2.emulator.protocol import PathError
from k2.emulator.recording import RecordedFrame, RecordingWriter, read_recording
from k2.emulator.server import BinanceEmulator, ReplayConfig
from k2.schema.kinds import RecordKind
from k2.sources import RawFrame
from k2.sources.kraken.asset_pairs import BUNDLED_ASSET_PAIRS
from tests.unit.sources.kraken.recorded import KRAKEN, REST_PAGE, SNIPPETS, parser

PROTOCOL = KrakenProtocol()
RECORDED = list(read_recording(BUNDLED_KRAKEN))
TIMES = re.compile(rb'"time_in":"[^"]*","time_out":"[^"]*"')


def _real_times(reply: bytes, real: str) -> bytes:
    """``reply`` with the ``time_in``/``time_out`` of the real message ``real`` (the clock differs)."""
    match = TIMES.search(real.encode())
    assert match is not None
    return TIMES.sub(match.group(0), reply)


def _answer(message: dict[str, Any], subscribed: tuple[str, ...] = ()) -> list[bytes]:
    answer = PROTOCOL.control(list(subscribed), json.dumps(message))
    assert answer.reply is not None
    return [answer.reply, *answer.more]


# --- the recording ---------------------------------------------------------------------------------------
def test_the_bundled_recording_is_the_rendering_of_the_real_fixtures() -> None:
    snippets = (KRAKEN / "ws_v2_snippets_kraken-async-rs_2024-05.jsonl").read_bytes()
    assert [(f.recv_us, f.frame) for f in RECORDED] == [(f.recv_us, f.frame) for f in render(REST_PAGE, snippets)]


def test_the_recording_holds_the_1000_real_trades_once_and_the_real_tickers_verbatim() -> None:
    assert len(RECORDED) == 563
    messages = [json.loads(f.frame) for f in RECORDED]
    assert Counter(m["channel"] for m in messages) == {"trade": 561, "ticker": 2}
    assert [m["type"] for m in messages if m["channel"] == "trade"] == ["snapshot"] + ["update"] * 560
    trades = [t for m in messages if m["channel"] == "trade" for t in m["data"]]
    assert [t["trade_id"] for t in trades] == list(range(10_218_208, 10_219_208))
    assert len(messages[0]["data"]) == 50
    rest = json.loads(REST_PAGE)["result"]["XBTUSDT"]
    for trade, row in zip(trades, rest, strict=True):  # every value the REST page's
        assert trade["side"] == {"b": "buy", "s": "sell"}[row[3]]
        assert trade["ord_type"] == {"l": "limit", "m": "market"}[row[4]]
    texts = [f.frame for f in RECORDED]
    assert texts[1:3] == [SNIPPETS["ticker_snapshot"], SNIPPETS["ticker_update"]]
    assert '"price":105433.60000,"qty":0.00027625' in texts[0]  # the REST strings' text, as numbers
    assert [f.recv_us for f in RECORDED] == sorted(f.recv_us for f in RECORDED)
    assert STATUS.decode() == SNIPPETS["status"] and HEARTBEAT.decode() == SNIPPETS["heartbeat"]


def test_recorded_frames_are_routed_by_channel_and_symbol() -> None:
    streams = Counter(route(f).stream for f in RECORDED)
    assert streams == {"trade:BTC/USDT": 561, "ticker:BTC/USD": 2}
    out = route(RECORDED[0])
    assert out.raw == out.combined == RECORDED[0].frame.encode() and PROTOCOL.payload(out, "v2") == out.raw
    assert PROTOCOL.record_kind(out) is RecordKind.TRADES
    assert PROTOCOL.record_kind(route(RECORDED[1])) is RecordKind.QUOTES
    for name in ("status", "heartbeat", "subscribe_ack_trade", "book_update"):
        assert route(RecordedFrame(0, SNIPPETS[name])).stream is None
    assert route(RecordedFrame(0, "not json")).stream is None


# --- Kraken's replies -----------------------------------------------------------------------------------------
def test_handshake_paths() -> None:
    assert PROTOCOL.open("/v2") == ("v2", []) and PROTOCOL.open("/v2/?x=1") == ("v2", [])
    for path in ("/", "/ws", "/stream?streams=btcusdt@trade"):
        with pytest.raises(PathError) as refused:
            PROTOCOL.open(path)
        assert refused.value.status == 404
    assert PROTOCOL.greeting() == [STATUS]


def test_subscribe_acks_are_krakens_byte_for_byte() -> None:
    trade = {
        "method": "subscribe",
        "params": {"channel": "trade", "symbol": ["BTC/USD"], "snapshot": True},
        "req_id": 0,
    }
    (reply,) = _answer(trade)
    assert _real_times(reply, SNIPPETS["subscribe_ack_trade"]) == SNIPPETS["subscribe_ack_trade"].encode()
    ticker = {"method": "subscribe", "params": {"channel": "ticker", "symbol": ["BTC/USD"]}, "req_id": 42}
    (reply,) = _answer(ticker)
    assert _real_times(reply, SNIPPETS["subscribe_ack_ticker"]) == SNIPPETS["subscribe_ack_ticker"].encode()
    answer = PROTOCOL.control([], json.dumps(trade))
    assert answer.subscribe == ("trade:BTC/USD",) and answer.unsubscribe == ()


def test_ping_and_errors_are_krakens_byte_for_byte() -> None:
    (pong,) = _answer({"method": "ping", "req_id": 1})
    assert _real_times(pong, SNIPPETS["pong"]) == SNIPPETS["pong"].encode()
    (error,) = _answer({"method": "ping", "params": {}, "req_id": 0})
    assert (
        _real_times(error, SNIPPETS["error_ping_unsupported_field"])
        == SNIPPETS["error_ping_unsupported_field"].encode()
    )
    (error,) = _answer({"method": "subscribe", "params": {"channel": "spread", "symbol": ["BTC/USD"]}, "req_id": 0})
    real = SNIPPETS["error_subscribe_unsupported_event"]
    assert _real_times(error, real) == real.encode()


def test_one_reply_per_symbol_and_the_subscription_errors() -> None:
    request = {"method": "subscribe", "params": {"channel": "ticker", "symbol": ["BTC/USD", "NOPE/USD", "BTC/USDT"],
               "event_trigger": "bbo"}, "req_id": 2}  # fmt: skip
    answer = PROTOCOL.control(["ticker:BTC/USDT"], json.dumps(request))
    replies = [json.loads(r) for r in [answer.reply, *answer.more] if r is not None]
    assert [(r.get("result"), r.get("error"), r["success"]) for r in replies] == [
        ({"channel": "ticker", "event_trigger": "bbo", "snapshot": True, "symbol": "BTC/USD"}, None, True),
        (None, "Currency pair not supported", False),
        (None, "Already subscribed", False),
    ]
    assert all(r["method"] == "subscribe" and r["req_id"] == 2 and r["time_in"] <= r["time_out"] for r in replies)
    assert answer.subscribe == ("ticker:BTC/USD",)

    unsubscribe = {"method": "unsubscribe", "params": {"channel": "ticker", "symbol": ["BTC/USD", "ETH/USD"]}}
    answer = PROTOCOL.control(["ticker:BTC/USD"], json.dumps(unsubscribe))
    replies = [json.loads(r) for r in [answer.reply, *answer.more] if r is not None]
    assert [(r.get("result"), r.get("error")) for r in replies] == [
        ({"channel": "ticker", "symbol": "BTC/USD"}, None), (None, "Subscription Not Found"),
    ]  # fmt: skip
    assert answer.unsubscribe == ("ticker:BTC/USD",) and answer.subscribe == ()

    (private,) = _answer({"method": "subscribe", "params": {"channel": "executions", "symbol": ["BTC/USD"]}})
    assert json.loads(private)["error"].startswith("Private data and trading are unavailable")
    for garbage in ("not json", '{"params":{}}', '{"method":"subscribe","params":{"channel":"trade"}}'):
        reply = PROTOCOL.control([], garbage).reply
        assert reply is not None and json.loads(reply)["error"] == "Unsupported event"


def test_a_pair_of_the_recording_may_be_subscribed_though_the_bundled_asset_pairs_lacks_it(tmp_path: Path) -> None:
    """A capture of a pair listed after 2021 (here: a real message with its symbol renamed) is served."""
    recording = tmp_path / "newer.jsonl"
    with RecordingWriter(recording) as writer:
        writer.write(SNIPPETS["trade_update"].replace("BTC/USD", "PYUSD/USD"), 1_716_813_792_000_000)
    protocol = KrakenProtocol()
    request = json.dumps({"method": "subscribe", "params": {"channel": "trade", "symbol": ["PYUSD/USD"]}})
    assert json.loads(protocol.control([], request).reply or b"{}")["error"] == "Currency pair not supported"
    protocol.rest(recording, Faults())  # the server hands the protocol its recording
    answer = protocol.control([], request)
    assert answer.subscribe == ("trade:PYUSD/USD",) and json.loads(answer.reply or b"{}")["success"] is True
    rest = protocol.rest(recording, Faults())
    page = _get(rest, "/0/public/Trades?pair=PYUSDUSD&since=0")  # the REST pair K2 asks for it
    assert [row[6] for row in page["result"]["PYUSDUSD"]] == [70635299, 70635300]


# --- bad frames ----------------------------------------------------------------------------------------------
TRADE = route(RECORDED[0])  # the snapshot: 50 real trades
TICKER = route(RECORDED[1])
RECEIVED_US = 1_762_796_305_000_000  # just after the snapshot's newest trade


def test_kraken_names_its_own_adversarial_kinds() -> None:
    reasons = expected_reasons(PROTOCOL)
    assert set(reasons) == {*MALFORMED_KINDS, *ADVERSARIAL_KINDS, CROSSED_QUOTE}
    assert len(ADVERSARIAL_KINDS) >= 15


@pytest.mark.parametrize("kind", list(expected_reasons(PROTOCOL)))
def test_each_bad_frame_kind_is_rejected_with_its_expected_reason(kind: str) -> None:
    source = TICKER if kind == CROSSED_QUOTE else TRADE
    bad = PROTOCOL.bad_frame(source, kind)
    assert bad.stream == source.stream and bad.kind == kind  # routed like the real frame, whatever it names
    for is_sample_data in (True, False):
        p = parser(("BTC/USDT", "BTC/USD"), is_sample_data=is_sample_data)
        parsed = p.parse([RawFrame(source.raw, RECEIVED_US), RawFrame(bad.raw, RECEIVED_US + 1)])
        assert [(r.reason, r.frame.payload) for r in parsed.rejected] == [(expected_reasons(PROTOCOL)[kind], bad.raw)]
        assert parsed.rows(RecordKind.QUOTES if source is TICKER else RecordKind.TRADES) == len(
            json.loads(source.raw)["data"]
        )


def test_bad_frames_keep_every_other_number_text() -> None:
    bad = PROTOCOL.bad_frame(TRADE, "side_unknown").raw.decode()
    assert bad.replace('"side":"hold"', '"side":"buy"', 1) == TRADE.raw.decode()
    crossed = json.loads(PROTOCOL.bad_frame(TICKER, CROSSED_QUOTE).raw)["data"][0]
    real = json.loads(TICKER.raw)["data"][0]
    assert (crossed["bid"], crossed["ask"]) == (real["ask"], real["bid"])


def test_faults_cycle_through_krakens_kinds_after_trade_messages_only() -> None:
    injected: dict[str, int] = {}
    faults = Faults(malformed_every=2, adversarial_every=3, crossed_every=1, duplicate_every=100)
    out = list(replay_frames(RECORDED[:40], faults, injected, route=route, venue=PROTOCOL))
    bad = [o for o in out if o.kind not in (FRAME, "duplicate")]
    assert [o.kind for o in bad if o.kind in MALFORMED_KINDS] == list(MALFORMED_KINDS * 4)[:19]
    assert [o.kind for o in bad if o.kind in ADVERSARIAL_KINDS] == list(ADVERSARIAL_KINDS)[:12]
    assert injected[CROSSED_QUOTE] == 2  # one after each of the two tickers
    assert all(o.stream == "trade:BTC/USDT" for o in bad if o.kind != CROSSED_QUOTE)


# --- the REST side -------------------------------------------------------------------------------------------
def _get(rest: KrakenRestEndpoints, target: str) -> dict[str, Any]:
    answer = rest.handle(target)
    assert answer is not None and answer.status == 200
    decoded: dict[str, Any] = json.loads(answer.body)
    return decoded


def test_trades_pages_follow_last_through_the_whole_recording_once() -> None:
    rest = KrakenRestEndpoints(BUNDLED_KRAKEN, requests_per_s=1e9, burst=1e9)
    ids: list[int] = []
    since = 0
    while True:
        page = _get(rest, f"/0/public/Trades?pair=XBTUSDT&since={since}&count=300")
        assert page["error"] == [] and set(page["result"]) == {"XBTUSDT", "last"}
        rows = page["result"]["XBTUSDT"]
        if not rows:
            break
        ids += [r[6] for r in rows]
        since = int(page["result"]["last"])
    assert ids == list(range(10_218_208, 10_219_208))
    assert since == 1_762_820_035_982_277_000  # the last trade's µs x 1000 (no other trade in that µs)


def test_trades_rows_are_the_rest_pages_rows() -> None:
    rest = KrakenRestEndpoints(BUNDLED_KRAKEN)
    rows = _get(rest, "/0/public/Trades?pair=XXBTZUSD")  # BTC/USD: the recording has no trade of it
    assert rows == {"error": [], "result": {"XXBTZUSD": [], "last": "0"}}
    newest = json.loads(rest.handle("/0/public/Trades?pair=XBTUSDT&count=2").body, parse_float=str)  # type: ignore[union-attr]
    real = json.loads(REST_PAGE, parse_float=str)["result"]["XBTUSDT"][-2:]
    # The same row but the time: the recording keeps microseconds (1762820035.9822779 -> ...035.982277).
    assert [[*r[:2], *r[3:]] for r in newest["result"]["XBTUSDT"]] == [[*r[:2], *r[3:]] for r in real]
    assert [r[2] for r in newest["result"]["XBTUSDT"]] == ["1762819943.330817", "1762820035.982277"]
    in_seconds = _get(rest, "/0/public/Trades?pair=XBTUSDT&since=1762820000")  # seconds, as Kraken's doc example
    assert [r[6] for r in in_seconds["result"]["XBTUSDT"]] == [10_219_207]


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("/0/public/Trades?pair=NOPE", "EQuery:Unknown asset pair"),
        ("/0/public/Trades", "EGeneral:Invalid arguments"),
        ("/0/public/Trades?pair=XBTUSDT&count=1001", "EGeneral:Invalid arguments"),
        ("/0/public/Trades?pair=XBTUSDT&since=soon", "EGeneral:Invalid arguments"),
        ("/0/public/Depth?pair=XBTUSDT", "EGeneral:Unknown method"),
    ],
)
def test_trades_errors_come_in_the_error_array(target: str, error: str) -> None:
    rest = KrakenRestEndpoints(BUNDLED_KRAKEN)
    assert _get(rest, target) == {"error": [error]}
    assert rest.requests[-1].error == error


def test_asset_pairs_and_other_paths() -> None:
    rest = KrakenRestEndpoints(BUNDLED_KRAKEN)
    answer = rest.handle("/0/public/AssetPairs")
    assert answer is not None and answer.body == BUNDLED_ASSET_PAIRS.read_bytes()
    assert rest.handle("/v2") is None and rest.handle("/api/v3/ping") is None


def test_a_heartbeat_goes_only_to_a_subscribed_connection_sent_no_update_for_a_second() -> None:
    assert PROTOCOL.heartbeat_interval_s == 1.0
    assert PROTOCOL.heartbeat(["trade:BTC/USD"], 1.0, 0) == [HEARTBEAT]
    assert PROTOCOL.heartbeat(["trade:BTC/USD"], 0.4, 0) == []  # an update came within the second
    assert PROTOCOL.heartbeat([], 5.0, 0) == []  # nothing subscribed


# --- the server over a real WebSocket ----------------------------------------------------------------------------
def test_a_client_is_greeted_acked_per_symbol_served_its_streams_and_heartbeats_when_idle() -> None:
    async def main() -> tuple[list[dict[str, Any]], dict[str, Any], BinanceEmulator]:
        config = ReplayConfig(recording=BUNDLED_KRAKEN, protocol=KrakenProtocol(), speed=None)
        async with BinanceEmulator(config) as emu, connect(emu.url + "/v2", compression=None) as ws:
            got = [json.loads(await asyncio.wait_for(ws.recv(), 10))]
            await ws.send(json.dumps({"method": "subscribe", "params": {"channel": "trade",
                                      "symbol": ["BTC/USDT", "BTC/USD"], "snapshot": True}, "req_id": 1}))  # fmt: skip
            while len([m for m in got if m.get("channel") == "trade"]) < 561:
                got.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            await asyncio.wait_for(emu.wait_finished(), 10)
            idle = json.loads(await asyncio.wait_for(ws.recv(), 10))  # nothing left to send: a heartbeat
            return got, idle, emu

    got, idle, emu = asyncio.run(main())
    assert got[0] == json.loads(STATUS)  # the greeting comes first
    acks = [m for m in got if m.get("method") == "subscribe"]
    assert [(a["result"]["symbol"], a["success"]) for a in acks] == [("BTC/USDT", True), ("BTC/USD", True)]
    assert idle == {"channel": "heartbeat"}
    assert not [m for m in got if m.get("channel") == "ticker"]  # never subscribed: never sent
    assert emu.frames_sent == 561 and emu.missed == 2 and emu.control_sent >= 4


def test_the_v1_path_is_refused() -> None:
    async def main() -> None:
        async with BinanceEmulator(ReplayConfig(recording=BUNDLED_KRAKEN, protocol=KrakenProtocol())) as emu:
            with pytest.raises(InvalidStatus, match="404"):
                async with connect(emu.url + "/"):
                    pass

    asyncio.run(main())


def test_the_recording_is_gzip_of_recording_lines() -> None:
    with gzip.open(BUNDLED_KRAKEN, "rt", encoding="utf-8") as fh:
        first = json.loads(fh.readline())
    assert set(first) == {"recv_us", "frame"} and isinstance(OutFrame, type)
