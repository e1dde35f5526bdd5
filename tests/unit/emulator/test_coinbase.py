"""The emulator speaking Coinbase Exchange: handshake, subscribe/unsubscribe replies, errors, heartbeats over
real loopback WebSockets; the REST trades endpoint (pure handler, fake clock) and K2's fetcher against it."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from k2.config import K2Settings, LakeSettings
from k2.emulator.coinbase import CoinbaseProtocol, subscriptions_reply
from k2.emulator.coinbase_rest import CoinbaseRest
from k2.emulator.faults import ADVERSARIAL_KINDS, DUPLICATE, EXPECTED_REASON, MALFORMED_KINDS, Faults, replay_frames
from k2.emulator.recording import BUNDLED_COINBASE_SESSION, read_recording
from k2.emulator.server import BinanceEmulator, ReplayConfig
from k2.errors import BackfillError
from k2.feed.stamp import parse_canonical
from k2.quality.sequence import Gap, StreamKey
from k2.schema.kinds import RecordKind
from k2.sources import RawFrame, RejectReason, load_venue
from k2.sources.coinbase.backfill import CoinbaseTradeFetcher
from k2.sources.rest import TokenBucket
from k2.sources.timestamps import parse_us
from tests.pacing import assert_paced

SESSION = [json.loads(f.frame) for f in read_recording(BUNDLED_COINBASE_SESSION)]
SKL_USD = [m for m in SESSION if m.get("product_id") == "SKL-USD" and m["type"] in ("match", "last_match")]


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _config(**kwargs: Any) -> ReplayConfig:
    return ReplayConfig(protocol=CoinbaseProtocol(), recording=BUNDLED_COINBASE_SESSION, **kwargs)


def _connect(url: str) -> Any:
    return connect(url, compression=None, close_timeout=0.5)


async def _next(ws: ClientConnection, want: str) -> dict[str, Any]:
    """The next message of type ``want`` (others, e.g. heartbeats, skipped)."""
    async with asyncio.timeout(30):
        while True:
            message: dict[str, Any] = json.loads(await ws.recv())
            if message["type"] == want:
                return message


# --- the WebSocket side -----------------------------------------------------------------------------------
def test_subscribe_is_acknowledged_then_exactly_the_subscribed_messages_come_byte_for_byte() -> None:
    subscribe = json.dumps(
        {"type": "subscribe", "channels": [{"name": "matches", "product_ids": ["SKL-USD", "NMR-EUR"]},
                                           {"name": "ticker", "product_ids": ["SKL-USD"]}]}
    )  # fmt: skip
    wanted = [
        line.frame.encode()
        for line in read_recording(BUNDLED_COINBASE_SESSION)
        if (m := json.loads(line.frame)).get("product_id") in ("SKL-USD", "NMR-EUR")
        and (m["type"] in ("match", "last_match") or (m["type"] == "ticker" and m["product_id"] == "SKL-USD"))
    ]

    async def main() -> tuple[bytes, list[bytes], dict[str, Any]]:
        async with BinanceEmulator(_config()) as emu, _connect(emu.url) as ws:
            await ws.send(subscribe)
            ack = await ws.recv(decode=False)
            got = [await ws.recv(decode=False) for _ in wanted]
            await asyncio.wait_for(emu.wait_finished(), 30)
            return ack, got, emu.stats()

    ack, got, stats = asyncio.run(main())
    assert json.loads(ack) == {
        "type": "subscriptions",
        "channels": [{"name": "matches", "product_ids": ["SKL-USD", "NMR-EUR"]},
                     {"name": "ticker", "product_ids": ["SKL-USD"]}],
    }  # fmt: skip
    assert got == wanted and len(wanted) == 53 + 9 + 53
    assert stats["frames_sent"] == len(wanted) and stats["control_sent"] >= 1  # the ack (and maybe heartbeats)
    assert stats["missed"] == 9_943 - len(wanted)  # level2 and the other products: nobody asked


def test_other_paths_are_refused_at_the_handshake() -> None:
    async def main() -> int:
        async with BinanceEmulator(_config()) as emu:
            with pytest.raises(InvalidStatus) as refused:
                async with _connect(emu.url + "/stream?streams=btcusdt@trade"):
                    pass
            return refused.value.response.status_code

    assert asyncio.run(main()) == 404


def test_unsubscribe_and_error_replies_as_coinbase_sends_them() -> None:
    async def main() -> list[dict[str, Any]]:
        async with BinanceEmulator(_config()) as emu, _connect(emu.url) as ws:
            replies = []
            for message in (
                '{"type":"subscribe","product_ids":["SKL-USD","SKL-BTC"],"channels":["matches","heartbeat"]}',
                '{"type":"unsubscribe","channels":["heartbeat"]}',
                '{"type":"unsubscribe","channels":[{"name":"matches","product_ids":["SKL-BTC"]}]}',
                '{"type":"unsubscribe"}',
                '{"type":"subscribe","channels":[{"name":"matches","product_ids":["BTC-XXX-1"]}]}',
                '{"type":"subscribe","product_ids":["SKL-USD"],"channels":["level3"]}',
                '{"type":"subscribe","channels":',
                '{"type":"unsubscribe","channels":["matches"]}',
            ):
                await ws.send(message)
                replies.append(await _next_reply(ws))
            return replies

    replies = asyncio.run(main())
    assert replies == [
        {"type": "subscriptions", "channels": [{"name": "matches", "product_ids": ["SKL-USD", "SKL-BTC"]},
                                               {"name": "heartbeat", "product_ids": ["SKL-USD", "SKL-BTC"]}]},
        {"type": "subscriptions", "channels": [{"name": "matches", "product_ids": ["SKL-USD", "SKL-BTC"]}]},
        {"type": "subscriptions", "channels": [{"name": "matches", "product_ids": ["SKL-USD"]}]},
        {"type": "error", "message": "Failed to unsubscribe", "reason": "No channels provided"},
        {"type": "error", "message": "Failed to subscribe", "reason": "BTC-XXX-1 is not a valid product"},
        {"type": "error", "message": "Failed to subscribe", "reason": "level3 is not a valid channel"},
        replies[6],
        {"type": "subscriptions", "product_ids": [], "channels": []},
    ]  # fmt: skip
    assert replies[6]["type"] == "error" and replies[6]["message"] == "Failed to subscribe"
    # The empty acknowledgement is byte for byte the recorded one (coinbase-pro-node's fixture, minus its indent).
    assert subscriptions_reply([]) == b'{"type":"subscriptions","product_ids":[],"channels":[]}'


async def _next_reply(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            message: dict[str, Any] = json.loads(await ws.recv())
            if message["type"] in ("subscriptions", "error"):
                return message


def test_heartbeats_come_per_subscribed_product_with_its_last_sequence_and_trade_id() -> None:
    async def main() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        async with BinanceEmulator(_config()) as emu, _connect(emu.url) as ws:
            await ws.send('{"type":"subscribe","product_ids":["SKL-GBP","NU-GBP"],"channels":["matches"]}')
            await _next(ws, "subscriptions")
            await asyncio.wait_for(emu.wait_finished(), 30)
            for _ in range(4):  # the two products' two trades each
                assert json.loads(await ws.recv())["type"] in ("match", "last_match")
            await ws.send('{"type":"subscribe","product_ids":["SKL-GBP","NU-GBP"],"channels":["heartbeat"]}')
            await _next(ws, "subscriptions")
            beats = {}
            while len(beats) < 2:
                beat = await _next(ws, "heartbeat")
                beats[beat["product_id"]] = beat
            return [beats["SKL-GBP"], beats["NU-GBP"]], emu.stats()

    beats, stats = asyncio.run(main())
    skl = [m for m in SESSION if m.get("product_id") == "SKL-GBP" and m["type"] in ("match", "last_match")][-1]
    nu = [m for m in SESSION if m.get("product_id") == "NU-GBP" and m["type"] in ("match", "last_match")][-1]
    for beat, last in zip(beats, (skl, nu), strict=True):
        assert list(beat) == ["type", "sequence", "last_trade_id", "product_id", "time"]
        assert (beat["sequence"], beat["last_trade_id"]) == (last["sequence"], last["trade_id"])
        assert parse_us(beat["time"]) is not None
    assert stats["control_sent"] >= 4  # two acks, at least two heartbeats


def test_injected_faults_reach_the_client_in_replay_order_and_the_parser_names_each() -> None:
    faults = Faults(malformed_every=10, adversarial_every=7, crossed_every=20, duplicate_every=30, reorder_every=50)
    protocol = CoinbaseProtocol()
    planned = [
        f
        for f in replay_frames(read_recording(BUNDLED_COINBASE_SESSION), faults, {}, protocol.route, protocol)
        if (f.stream or "").startswith(("matches:", "ticker:"))
    ]
    expected = [f.raw for f in planned]
    products = sorted({m["product_id"] for m in SESSION if "product_id" in m})
    subscribe = json.dumps({"type": "subscribe", "product_ids": products, "channels": ["matches", "ticker"]})

    async def main() -> tuple[list[bytes], dict[str, int]]:
        async with BinanceEmulator(_config(faults=faults)) as emu, _connect(emu.url) as ws:
            await ws.send(subscribe)
            await _next(ws, "subscriptions")
            got = [await asyncio.wait_for(ws.recv(decode=False), 30) for _ in expected]
            await asyncio.wait_for(emu.wait_finished(), 30)
            return got, dict(emu.injected)

    got, injected = asyncio.run(main())
    assert got == expected
    bad = {k: n for k, n in injected.items() if k in EXPECTED_REASON and n}
    # 107 recorded matches and 107 tickers: every 10th match is followed by a malformed copy, every 7th by a
    # hostile one, every 20th ticker by a crossed one.
    assert sum(bad.get(k, 0) for k in MALFORMED_KINDS) == 107 // 10
    assert sum(bad.get(k, 0) for k in ADVERSARIAL_KINDS) == 107 // 7
    assert bad["crossed_quote"] == 107 // 20
    frames = [RawFrame(p, 1_618_677_900_000_000) for p in got]
    parsed = parse_canonical("coinbase", frames, symbols=products, kinds=(RecordKind.TRADES, RecordKind.QUOTES))
    want: Counter[RejectReason] = Counter()
    for kind, n in bad.items():
        want[EXPECTED_REASON[kind]] += n
    assert Counter(r.reason for r in parsed.rejected) == want
    duplicates = sum(f.kind == DUPLICATE for f in planned)  # of the subscribed streams' frames
    assert duplicates > 0 and len(got) == 214 + duplicates + sum(bad.values())
    assert parsed.rows(RecordKind.TRADES) + parsed.rows(RecordKind.QUOTES) == 214 + duplicates


# --- the REST side, pure --------------------------------------------------------------------------------
def _json(rest: CoinbaseRest, target: str) -> tuple[int, dict[str, str], Any]:
    response = rest.handle(target)
    assert response is not None
    return response.status, dict(response.headers), json.loads(response.body)


def test_trades_pages_by_id_newest_first_with_cursor_headers() -> None:
    rest = CoinbaseRest(BUNDLED_COINBASE_SESSION, clock=Clock())
    status, headers, page = _json(rest, "/products/SKL-USD/trades?after=1568272&limit=3")
    assert status == 200 and (headers["CB-BEFORE"], headers["CB-AFTER"]) == ("1568271", "1568269")
    by_id = {m["trade_id"]: m for m in SKL_USD}
    assert page == [
        {"time": by_id[i]["time"], "trade_id": i, "price": by_id[i]["price"], "size": by_id[i]["size"],
         "side": by_id[i]["side"]}
        for i in (1568271, 1568270, 1568269)
    ]  # fmt: skip
    assert list(page[0]) == ["time", "trade_id", "price", "size", "side"]  # the order Coinbase writes
    _, headers, newest = _json(rest, "/products/SKL-USD/trades?limit=2")
    assert [t["trade_id"] for t in newest] == [1568319, 1568318] and headers["CB-AFTER"] == "1568318"
    _, _, older = _json(rest, f"/products/SKL-USD/trades?after={headers['CB-AFTER']}&limit=2")
    assert [t["trade_id"] for t in older] == [1568317, 1568316]
    _, _, newer = _json(rest, "/products/SKL-USD/trades?before=1568267&limit=2")
    assert [t["trade_id"] for t in newer] == [1568269, 1568268]
    _, _, everything = _json(rest, "/products/SKL-USD/trades")
    assert [t["trade_id"] for t in everything] == list(range(1568319, 1568266, -1))
    status, headers, empty = _json(rest, "/products/SKL-USD/trades?after=1568267")
    assert (status, empty) == (200, []) and "CB-AFTER" not in headers


def test_trades_errors() -> None:
    rest = CoinbaseRest(BUNDLED_COINBASE_SESSION, clock=Clock())
    assert _json(rest, "/products/BTC-USD/trades")[::2] == (404, {"message": "NotFound"})
    assert _json(rest, "/products/SKL-USD/trades?limit=1001")[0] == 400
    assert _json(rest, "/products/SKL-USD/trades?limit=0")[0] == 400
    assert _json(rest, "/products/SKL-USD/trades?after=x")[0] == 400
    assert _json(rest, "/products/SKL-USD/book")[0] == 404
    assert rest.handle("/") is None and rest.handle("/api/v3/ping") is None  # not Coinbase REST


def test_public_rate_limit_is_10_per_second_with_bursts_of_15() -> None:
    clock = Clock()
    rest = CoinbaseRest(BUNDLED_COINBASE_SESSION, clock=clock)
    q = "/products/SKL-USD/trades?limit=1"
    assert [_json(rest, q)[0] for _ in range(16)] == [200] * 15 + [429]
    assert _json(rest, q)[::2] == (429, {"message": "Public rate limit exceeded"})
    clock.now += 0.1  # one token back
    assert [_json(rest, q)[0] for _ in range(2)] == [200, 429]
    clock.now += 10
    assert [_json(rest, q)[0] for _ in range(16)] == [200] * 15 + [429]
    assert "Retry-After" not in dict(rest.handle(q).headers)  # type: ignore[union-attr]


def test_injected_rest_faults_come_first_in_order() -> None:
    faults = Faults(rest_errors=((429, 0.5), (503, 0.25), ("bad_body", 0), ("empty_page", 0), ("slow", 1.5)))
    rest = CoinbaseRest(BUNDLED_COINBASE_SESSION, faults, clock=Clock())
    q = "/products/SKL-USD/trades?after=1568270&limit=2"
    answers = [rest.handle(q) for _ in range(6)]
    assert [(a.status, dict(a.headers).get("Retry-After")) for a in answers[:2]] == [(429, "0.5"), (503, "0.25")]  # type: ignore[union-attr]
    right = answers[5].body  # type: ignore[union-attr]
    assert answers[2].body == right[: len(right) // 2] and answers[3].body == b"[]"  # type: ignore[union-attr]
    assert answers[4].body == right and answers[4].delay_s == 1.5  # type: ignore[union-attr]
    assert [r.status for r in rest.requests] == [429, 503, 200, 200, 200, 200]


# --- K2's fetcher against the emulator's REST (a real loopback HTTP server) ----------------------------
def _gap(first: int, last: int) -> Gap:
    return Gap(StreamKey("COINBASE", "SKL-USD", "matches"), first, last, 0, 0, "g")


def test_fetcher_pages_a_gap_through_faults_within_its_rate(tmp_path: Path) -> None:
    settings = K2Settings(lake=LakeSettings(warehouse=tmp_path))
    faults = Faults(rest_errors=((429, 0.1), (502, 0.1)))

    async def main() -> tuple[list[list[int]], list[Any]]:
        async with BinanceEmulator(_config(faults=faults)) as emu:
            fetcher = CoinbaseTradeFetcher(settings, load_venue("coinbase").rules(), emu.http_url,
                                           limiter=TokenBucket(20, 2))  # fmt: skip
            try:
                pages = [(await fetcher.page(_gap(1568268, 1568300), i, 4)).ids for i in range(1568268, 1568300, 4)]
            finally:
                await fetcher.aclose()
            return pages, emu.rest.requests  # type: ignore[union-attr]

    pages, requests = asyncio.run(main())
    assert pages == [list(range(i, i + 4)) for i in range(1568268, 1568300, 4)]
    assert [r.status for r in requests] == [429, 502] + [200] * 8
    assert [r.query for r in requests[2:4]] == [{"after": "1568272", "limit": "4"}, {"after": "1568276", "limit": "4"}]
    assert_paced([r.at for r in requests if r.status == 200], 1, 2, 20)


def test_fetcher_gives_up_on_a_product_the_venue_does_not_know(tmp_path: Path) -> None:
    settings = K2Settings(lake=LakeSettings(warehouse=tmp_path))

    async def main() -> None:
        async with BinanceEmulator(_config()) as emu:
            fetcher = CoinbaseTradeFetcher(settings, load_venue("coinbase").rules(), emu.http_url)
            try:
                await fetcher.page(Gap(StreamKey("COINBASE", "BTC-USD", "matches"), 5, 9, 0, 0, "g"), 5, 5)
            finally:
                await fetcher.aclose()

    with pytest.raises(BackfillError, match="HTTP 404"):
        asyncio.run(main())
