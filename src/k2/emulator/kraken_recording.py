"""How the bundled Kraken recording is made: real REST trades rendered into v2 ``trade`` messages, plus real
v2 tickers. Run ``python -m k2.emulator.kraken_recording <rest page> <v2 snippets> <out.jsonl.gz>``.

Real Kraken WebSocket v2 recordings are tiny (about ten messages exist in public repositories), so the
emulator's trades come from a real REST ``Trades`` page (1,000 consecutive trades) written in v2's
``trade`` form; nothing is invented and nothing is changed in value:

* ``price`` and ``qty``: the REST strings' text, written as JSON numbers (``"105433.60000"`` ->
  ``105433.60000``), which is how v2 sends them;
* ``timestamp``: the REST time (seconds, a JSON number) floored to the microsecond, in RFC 3339
  (``1762795433.9717445`` -> ``2025-11-10T17:23:53.971744Z``), v2's precision;
* ``side`` ``b``/``s`` -> ``buy``/``sell``, ``ord_type`` ``l``/``m`` -> ``limit``/``market``, ``trade_id`` as is;
  the v2 symbol of the REST pair is given (``XBTUSDT`` -> ``BTC/USDT``);
* the first 50 trades form one ``snapshot`` message (v2's trade snapshot is "the most recent 50
  trades"); after it, trades of the same REST time form one ``update`` message (v2 batches the trades
  of one match; the real ``trade_update`` snippet holds two trades of one timestamp), each received
  at its (last) trade's time.

The two real v2 ``ticker`` messages (``ticker_snapshot``, ``ticker_update``, BTC/USD, 2024) follow the
snapshot, verbatim. Their receive time was not recorded: they take the first ``update``'s (17 s after the
snapshot), so that a client which subscribes trades, then tickers a moment later, still gets them when
the recording is replayed at its pace or a few tens of times faster. I/O (reads and writes files): used
to build the recording and by its test, never by K2 at run time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec

from k2.emulator.recording import RecordedFrame, RecordingWriter
from k2.sources.kraken.values import json_scalar_text, seconds_us
from k2.sources.timestamps import format_us

SNAPSHOT_TRADES = 50
TICKER_SNIPPETS = ("ticker_snapshot", "ticker_update")
_SIDES = {"b": "buy", "s": "sell"}
_ORDER_TYPES = {"l": "limit", "m": "market"}


class _Page(msgspec.Struct):
    result: dict[str, msgspec.Raw]


def _rows(page: bytes) -> list[list[msgspec.Raw]]:
    result = dict(msgspec.json.decode(page, type=_Page).result)
    result.pop("last", None)
    (rows,) = result.values()
    return msgspec.json.decode(rows, type=list[list[msgspec.Raw]])


def _trade(row: list[msgspec.Raw], symbol: str) -> tuple[str, str, int]:
    """(v2 trade element text, the REST time text, µs) of one REST row."""
    price, qty, time_text = (json_scalar_text(bytes(x)) for x in row[:3])
    side, order = (msgspec.json.decode(row[i], type=str) for i in (3, 4))
    trade_id = msgspec.json.decode(row[6], type=int)
    assert price and qty and time_text, "a REST row without price, volume or time"
    time_us = seconds_us(time_text)
    assert time_us is not None
    element = (
        f'{{"symbol":{json.dumps(symbol)},"side":"{_SIDES[side]}","price":{price},"qty":{qty},'
        f'"ord_type":"{_ORDER_TYPES[order]}","trade_id":{trade_id},"timestamp":"{format_us(time_us)}"}}'
    )
    return element, time_text, time_us


def _message(message_type: str, elements: list[str]) -> str:
    return f'{{"channel":"trade","type":"{message_type}","data":[{",".join(elements)}]}}'


def render_trades(page: bytes, symbol: str) -> list[RecordedFrame]:
    """The REST page's trades as v2 ``trade`` messages (see the module docstring)."""
    trades = [_trade(row, symbol) for row in _rows(page)]
    head, rest = trades[:SNAPSHOT_TRADES], trades[SNAPSHOT_TRADES:]
    frames = [RecordedFrame(head[-1][2], _message("snapshot", [t[0] for t in head]))]
    group: list[tuple[str, str, int]] = []
    for trade in rest:
        if group and trade[1] != group[-1][1]:
            frames.append(RecordedFrame(group[-1][2], _message("update", [t[0] for t in group])))
            group = []
        group.append(trade)
    if group:
        frames.append(RecordedFrame(group[-1][2], _message("update", [t[0] for t in group])))
    return frames


def render(page: bytes, snippets: bytes, symbol: str = "BTC/USDT") -> list[RecordedFrame]:
    """The whole recording: ``page``'s trade snapshot, the real tickers of ``snippets``, the trade updates."""
    trades = render_trades(page, symbol)
    by_name = {s["name"]: s["raw"] for s in map(json.loads, snippets.splitlines()) if s}
    tickers = [RecordedFrame(trades[1].recv_us, by_name[name]) for name in TICKER_SNIPPETS]
    return [trades[0], *tickers, *trades[1:]]


def main(argv: list[str]) -> None:
    page, snippets, out = (Path(a) for a in argv)
    with RecordingWriter(out) as writer:
        for frame in render(page.read_bytes(), snippets.read_bytes()):
            writer.write(frame.frame, frame.recv_us)
    sys.stdout.write(f"{writer.frames} frames -> {out}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
