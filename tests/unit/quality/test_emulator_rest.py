"""The emulator's REST endpoints (pure handler, fake clock) and the withhold fault."""

from __future__ import annotations

import json

import pytest

from k2.emulator.faults import Faults, replay_frames
from k2.emulator.recording import BUNDLED_BINANCE_TRADES, RecordedFrame, read_recording
from k2.emulator.rest import RestEndpoints
from k2.errors import ConfigError


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _json(rest: RestEndpoints, target: str) -> tuple[int, dict[str, str], object]:
    response = rest.handle(target)
    assert response is not None
    return response.status, dict(response.headers), json.loads(response.body)


def test_historical_trades_from_id_limit_and_errors() -> None:
    rest = RestEndpoints(BUNDLED_BINANCE_TRADES, clock=Clock())
    status, headers, body = _json(rest, "/api/v3/historicalTrades?symbol=BTCUSDT&fromId=3735683259&limit=2")
    assert status == 200 and headers["X-MBX-USED-WEIGHT-1M"] == "25"
    assert body == [
        {"id": 3735683259, "price": "61837.63000000", "qty": "0.02000000", "quoteQty": "1236.75260000",
         "time": 1723161255342, "isBuyerMaker": True, "isBestMatch": True},
        {"id": 3735683260, "price": "61837.63000000", "qty": "0.04800000", "quoteQty": "2968.20624000",
         "time": 1723161255617, "isBuyerMaker": True, "isBestMatch": True},
    ]  # fmt: skip
    status, _, last = _json(rest, "/api/v3/historicalTrades?symbol=ethusdt&limit=1")  # no fromId: the newest
    assert status == 200 and isinstance(last, list) and len(last) == 1
    assert _json(rest, "/api/v3/historicalTrades?symbol=XRPUSDT")[2] == {"code": -1121, "msg": "Invalid symbol."}
    assert _json(rest, "/api/v3/historicalTrades?symbol=BTCUSDT&limit=1001")[0] == 400
    assert _json(rest, "/api/v3/historicalTrades?limit=10")[0] == 400
    assert _json(rest, "/api/v3/nope")[0] == 404
    assert rest.handle("/stream?streams=btcusdt@trade") is None  # not REST: the WebSocket handshake goes on


def test_exchange_info_and_ping() -> None:
    rest = RestEndpoints(BUNDLED_BINANCE_TRADES, clock=Clock())
    assert _json(rest, "/api/v3/ping")[:3:2] == (200, {})
    _, headers, info = _json(rest, "/api/v3/exchangeInfo")
    assert headers["X-MBX-USED-WEIGHT-1M"] == "21"
    assert info == {
        "timezone": "UTC",
        "symbols": [
            {"symbol": "BTCUSDT", "status": "TRADING", "baseAsset": "BTC", "quoteAsset": "USDT"},
            {"symbol": "ETHUSDT", "status": "TRADING", "baseAsset": "ETH", "quoteAsset": "USDT"},
        ],
    }


def test_weight_window_slides_and_injected_errors_come_first() -> None:
    clock = Clock()
    rest = RestEndpoints(
        BUNDLED_BINANCE_TRADES, Faults(rest_errors=((503, 2.5),)), weight_limit_per_minute=50, clock=clock
    )
    q = "/api/v3/historicalTrades?symbol=BTCUSDT&fromId=3735683259&limit=1"
    status, headers, _ = _json(rest, q)
    assert (status, headers["Retry-After"]) == (503, "2.5")
    assert _json(rest, q)[0] == 200
    clock.now += 30
    status, headers, body = _json(rest, q)
    msg = "Too much request weight used; current limit is 50 request weight per 1 MINUTE."
    assert (status, headers["Retry-After"], body) == (429, "31", {"code": -1003, "msg": msg})
    clock.now += 31
    assert _json(rest, q)[0] == 200
    assert [(r.status, r.weight) for r in rest.requests] == [(503, 25), (200, 25), (429, 0), (200, 25)]


def test_withhold_leaves_frames_out_of_the_stream() -> None:
    frames = [RecordedFrame(i, f.frame) for i, f in enumerate(read_recording(BUNDLED_BINANCE_TRADES)) if i < 10]
    injected: dict[str, int] = {}
    out = list(replay_frames(frames, Faults(withhold=((2, 3), (9, 5))), injected))
    assert [f.recv_us for f in out] == [0, 4, 5, 6, 7]
    assert injected == {"withheld": 5}
    with pytest.raises(ConfigError):
        Faults(withhold=((0, 1),))
    with pytest.raises(ConfigError):
        Faults(rest_errors=((200, 1.0),))


def test_rest_faults_beyond_http_errors_spoil_the_answer_in_order() -> None:
    faults = Faults(rest_errors=(("bad_body", 0), ("empty_page", 0), ("slow", 1.5), (503, 0.5)))
    rest = RestEndpoints(BUNDLED_BINANCE_TRADES, faults, clock=Clock())
    q = "/api/v3/historicalTrades?symbol=BTCUSDT&fromId=3735683259&limit=2"
    answers = [rest.handle(q) for _ in range(5)]
    assert all(a is not None for a in answers)
    bad, empty, slow, error, right = (a for a in answers if a is not None)
    assert (bad.status, empty.status, slow.status, error.status, right.status) == (200, 200, 200, 503, 200)
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad.body)
    assert bad.body == right.body[: len(right.body) // 2]
    assert empty.body == b"[]" and (slow.body, slow.delay_s) == (right.body, 1.5) and right.delay_s == 0
    with pytest.raises(ConfigError):
        Faults(rest_errors=(("gibberish", 0),))
    with pytest.raises(ConfigError):
        Faults(rest_errors=(("slow", -1),))
