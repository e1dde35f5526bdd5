"""ParseProcess: a parser run in a child process gives what it gives in the pipeline's own process
(rows, rejects with their frames and reasons, control counts), for every venue and for hostile
frames; a child that dies or fails stops the run with a named error; close() ends the child."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from k2.emulator.recording import BUNDLED_BINANCE_SESSION, read_recording
from k2.errors import ParseProcessError
from k2.feed.offload import ParseProcess
from k2.schema.kinds import RecordKind
from k2.sources import ParsedBatch, RawFrame, load_venue
from k2.sources.base import Rejected
from k2.sources.venue import VenueParser
from tests.conftest import FIXTURES, binance_parser, eventually
from tests.unit.sources.kraken.recorded import SNIPPETS, TRADE_UPDATE_RECV_US
from tests.unit.sources.kraken.recorded import parser as kraken_parser

BOTH = (RecordKind.TRADES, RecordKind.QUOTES)
HOSTILE = [
    b"",
    b"\xff\xfe not json",
    b"[1, 2, 3]",
    b'{"stream": "btcusdt@trade", "data": {"e": "trade", "s": "BTCUSDT", "t": -1}}',
    b'{"stream": "dogeusdt@trade", "data": {}}',
    b"[" * 10_000,
    b'{"result": null, "id": 1}',
]


def _binance_frames() -> list[RawFrame]:
    recorded = itertools.islice(read_recording(BUNDLED_BINANCE_SESSION), 4_000)
    frames = [RawFrame(f.frame.encode(), f.recv_us) for f in recorded]
    for i, payload in enumerate(HOSTILE):  # spread through the batch, with the receive time of their place
        at = 300 + i * 500
        frames.insert(at, RawFrame(payload, frames[at].received_at_us))
    return frames


def _coinbase() -> tuple[VenueParser, list[RawFrame]]:
    venue = load_venue("coinbase")
    lines = (FIXTURES / "coinbase" / "exchange_ws_frames.jsonl").read_bytes().splitlines()
    products = sorted({json.loads(line).get("product_id") for line in lines} - {None})
    parser = venue.build_parser(products, BOTH, rules=venue.rules(), validation=None, is_sample_data=True)
    return parser, [RawFrame(line, 1_618_677_900_000_000 + i) for i, line in enumerate([*lines, *HOSTILE])]


def _kraken() -> tuple[VenueParser, list[RawFrame]]:
    payloads = [text.encode() for text in SNIPPETS.values()] + HOSTILE
    return kraken_parser(("BTC/USD",), is_sample_data=True), [
        RawFrame(p, TRADE_UPDATE_RECV_US + i) for i, p in enumerate(payloads)
    ]


def _rejects(rejected: list[Rejected]) -> list[tuple[bytes, int, str, str]]:
    return [(r.frame.payload, r.frame.received_at_us, r.reason.value, r.detail) for r in rejected]


def _assert_same(got: ParsedBatch, want: ParsedBatch) -> None:
    assert got.records.keys() == want.records.keys()
    for kind, batch in want.records.items():
        assert got.records[kind].equals(batch), kind
    assert _rejects(got.rejected) == _rejects(want.rejected)
    assert got.control == want.control


@pytest.fixture
def process_of() -> Iterator[list[ParseProcess]]:
    started: list[ParseProcess] = []
    yield started
    for process in started:
        process.close()


def _cases() -> list[tuple[str, VenueParser, list[RawFrame]]]:
    return [
        ("binance", binance_parser(["BTCUSDT", "ETHUSDT"], BOTH, is_sample_data=True), _binance_frames()),
        ("coinbase", *_coinbase()),
        ("kraken", *_kraken()),
    ]


def test_a_parser_in_its_own_process_gives_the_rows_rejects_and_control_counts_of_the_parser_here(
    process_of: list[ParseProcess],
) -> None:
    for name, parser, frames in _cases():
        want = parser.parse(frames)
        assert want.rejected, name  # the hostile frames are in every batch
        assert sum(b.num_rows for b in want.records.values()) > 0, name
        process = ParseProcess(parser, name)
        process_of.append(process)

        async def twice(p: ParseProcess = process, f: list[RawFrame] = frames) -> list[ParsedBatch]:
            return [await p.parse(f), await p.parse(f[:5])]  # batches one after another, each whole

        got, small = asyncio.run(twice())
        _assert_same(got, want)
        _assert_same(small, parser.parse(frames[:5]))


def test_batches_handed_over_together_come_back_in_order_each_its_own(process_of: list[ParseProcess]) -> None:
    frames = _binance_frames()
    parser = binance_parser(["BTCUSDT", "ETHUSDT"], BOTH, is_sample_data=True)
    batches = [frames[i : i + 700] for i in range(0, len(frames), 700)]
    process = ParseProcess(parser, "binance")
    process_of.append(process)

    async def all_at_once() -> list[ParsedBatch]:
        return list(await asyncio.gather(*(process.parse(b) for b in batches)))

    for got, batch in zip(asyncio.run(all_at_once()), batches, strict=True):
        _assert_same(got, parser.parse(batch))


class _Failing:
    """A parser with a bug (importable, so the child can unpickle it)."""

    kinds = (RecordKind.TRADES,)

    def parse(self, frames: list[RawFrame]) -> ParsedBatch:
        raise ValueError(f"bug at frame {len(frames)}")


def test_a_parser_that_raises_in_its_process_stops_the_run_with_the_error(process_of: list[ParseProcess]) -> None:
    process = ParseProcess(_Failing(), "failing")  # type: ignore[arg-type]
    process_of.append(process)
    with pytest.raises(ParseProcessError, match=r"parser of failing failed in its process: ValueError: bug at frame 1"):
        asyncio.run(process.parse([RawFrame(b"{}", 1)]))


def test_a_parse_process_that_dies_is_a_named_error_not_a_hang(process_of: list[ParseProcess]) -> None:
    parser, frames = _kraken()
    process = ParseProcess(parser, "kraken")
    process_of.append(process)
    asyncio.run(process.parse(frames))  # started and answering
    pid = process._process.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ParseProcessError, match=r"the parse process of kraken is gone \(exit code -9\)"):
        asyncio.run(process.parse(frames))


def test_close_ends_the_child(process_of: list[ParseProcess]) -> None:
    parser, frames = _kraken()
    process = ParseProcess(parser, "kraken")
    asyncio.run(process.parse(frames))
    pid = process._process.pid
    process.close()
    assert process._process.exitcode == 0
    eventually(lambda: not Path(f"/proc/{pid}").exists(), timeout=10, interval=0.05)
