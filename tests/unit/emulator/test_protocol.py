"""Binance stream protocol details: request targets and control messages."""

from __future__ import annotations

import json

import pytest

from k2.emulator.protocol import (
    ControlRequest,
    PathError,
    decode_control,
    error_reply,
    parse_target,
    result_reply,
)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/stream?streams=btcusdt@trade/ethusdt@trade", (True, ["btcusdt@trade", "ethusdt@trade"])),
        ("/stream?streams=btcusdt@trade&timeUnit=millisecond", (True, ["btcusdt@trade"])),
        ("/stream", (True, [])),
        ("/ws/btcusdt@trade", (False, ["btcusdt@trade"])),
        ("/ws/btcusdt@trade/ethusdt@trade/btcusdt@trade", (False, ["btcusdt@trade", "ethusdt@trade"])),
        ("/ws", (False, [])),
        ("/ws/", (False, [])),
    ],
)
def test_targets(target: str, expected: tuple[bool, list[str]]) -> None:
    assert parse_target(target) == expected


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/", 404),
        ("/api/v3/trades", 404),
        ("/wsx/btcusdt@trade", 404),
        ("/stream?streams=btcusdt@trade&timeUnit=MICROSECOND", 400),
        ("/stream?streams=" + "/".join(f"s{i}@trade" for i in range(1025)), 400),
    ],
)
def test_refused_targets(target: str, status: int) -> None:
    with pytest.raises(PathError) as info:
        parse_target(target)
    assert info.value.status == status


def test_control_messages() -> None:
    assert decode_control('{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}') == ControlRequest(
        "SUBSCRIBE", ["btcusdt@trade"], 1
    )
    assert decode_control(b'{"method":"LIST_SUBSCRIPTIONS","id":"abc"}') == ControlRequest(
        "LIST_SUBSCRIPTIONS", [], "abc"
    )
    wrong = decode_control('{"params":["x"],"id":1}')
    assert isinstance(wrong, bytes)
    assert json.loads(wrong)["code"] == 2
    broken = decode_control("{not json")
    assert isinstance(broken, bytes)
    assert json.loads(broken)["code"] == 3


def test_replies() -> None:
    assert result_reply(1) == b'{"result":null,"id":1}'
    assert result_reply(3, ["btcusdt@trade"]) == b'{"result":["btcusdt@trade"],"id":3}'
    assert json.loads(error_reply(2, "Invalid request: x", 7)) == {
        "code": 2,
        "msg": "Invalid request: x",
        "id": 7,
    }
    assert json.loads(error_reply(3, "Invalid JSON")) == {"code": 3, "msg": "Invalid JSON"}
