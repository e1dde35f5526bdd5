"""The emulator over real loopback WebSockets: paths, filtering, control methods, pacing, faults, limits."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from k2.emulator.contract import RestSide
from k2.emulator.faults import ADVERSARIAL_KINDS, EXPECTED_REASON, MALFORMED_KINDS, Faults, replay_frames
from k2.emulator.recording import BUNDLED_BINANCE_TRADES, RecordingWriter, read_recording
from k2.emulator.rest import RestResponse
from k2.emulator.runner import EmulatorProcess
from k2.emulator.server import BinanceEmulator, EmulatorThread, ReplayConfig
from k2.errors import ConfigError, RecordingError
from k2.feed.stamp import parse_canonical
from k2.sources import RawFrame, RejectReason
from tests.conftest import eventually, eventually_async

BOTH = "/stream?streams=btcusdt@trade/ethusdt@trade"
TOTAL, BTC, ETH = 34_419, 19_904, 14_515
AFTER_RECORDING_US = 1_723_161_906_000_000  # a receive time just after the recording's last trade


def _data(combined: bytes) -> bytes:
    """The ``data`` object of a combined envelope, sliced verbatim."""
    prefix = combined.index(b'"data":') + len(b'"data":')
    return combined[prefix:-1]


def _of(frames: list[RawFrame], stream: str) -> list[bytes]:
    marker = f'{{"stream":"{stream}"'.encode()
    return [f.payload for f in frames if f.payload.startswith(marker)]


def _connect(url: str, max_queue: int = 16) -> Any:
    """A plain websockets client that does not linger on close (a client that stopped reading would)."""
    return connect(url, compression=None, close_timeout=0.5, max_queue=max_queue)


async def _recv(ws: ClientConnection, n: int) -> list[bytes]:
    out: list[bytes] = []
    async with asyncio.timeout(30):
        while len(out) < n:
            out.append(await ws.recv(decode=False))
    return out


async def _reply(ws: ClientConnection, request_id: int | str) -> tuple[dict[str, object], int]:
    """Read until the reply to ``request_id``; returns it and how many data frames came before."""
    skipped = 0
    async with asyncio.timeout(10):
        while True:
            message = json.loads(await ws.recv())
            if message.get("id") == request_id and "e" not in message and "stream" not in message:
                return message, skipped
            skipped += 1


async def _until_closed(ws: ClientConnection) -> list[bytes]:
    """Everything received until the server closes the connection."""
    out: list[bytes] = []
    async with asyncio.timeout(30):
        try:
            while True:
                out.append(await ws.recv(decode=False))
        except ConnectionClosed:
            return out


def test_combined_stream_replays_the_recording_byte_for_byte_then_idles(
    bundled_frames: list[RawFrame],
) -> None:
    async def main() -> tuple[list[bytes], dict[str, object], dict[str, object]]:
        async with BinanceEmulator() as emu, _connect(emu.url + BOTH) as ws:
            got = await _recv(ws, TOTAL)
            await asyncio.wait_for(emu.wait_finished(), 10)
            # After the last frame the connection stays open, like a live feed.
            await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":9}')
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            return got, reply, emu.stats()

    got, reply, stats = asyncio.run(main())
    assert got == [f.payload for f in bundled_frames]
    assert reply == {"result": ["btcusdt@trade", "ethusdt@trade"], "id": 9}
    assert stats["replayed"] == TOTAL
    assert stats["frames_sent"] == TOTAL
    assert stats["connections"] == 1
    assert stats["replays_completed"] == 1
    assert stats["finished"] is True
    assert stats["disconnects_injected"] == 0


def test_raw_path_sends_only_the_data_object_of_subscribed_streams(bundled_frames: list[RawFrame]) -> None:
    async def main() -> tuple[list[bytes], int]:
        async with BinanceEmulator() as emu, _connect(emu.url + "/ws/btcusdt@trade") as ws:
            got = await _recv(ws, BTC)
            await asyncio.wait_for(emu.wait_finished(), 10)
            return got, emu.replayed

    got, replayed = asyncio.run(main())
    assert got == [_data(p) for p in _of(bundled_frames, "btcusdt@trade")]
    assert got[0] == (
        b'{"e":"trade","E":1723161255343,"s":"BTCUSDT","t":3735683259,"p":"61837.63000000",'
        b'"q":"0.02000000","T":1723161255342,"m":true,"M":true}'
    )
    assert replayed == BTC  # ETH frames had no subscriber: skipped, as a live feed would


def test_each_connection_gets_only_its_streams_from_the_shared_cursor(bundled_frames: list[RawFrame]) -> None:
    async def main() -> tuple[list[bytes], list[bytes]]:
        async with (
            BinanceEmulator(ReplayConfig(min_clients=2)) as emu,
            _connect(emu.url + BOTH) as both,
            _connect(emu.url + "/stream?streams=ethusdt@trade") as eth,
        ):
            got_both, got_eth = await asyncio.gather(_recv(both, TOTAL), _recv(eth, ETH))
            return got_both, got_eth

    got_both, got_eth = asyncio.run(main())
    assert got_both == [f.payload for f in bundled_frames]
    assert got_eth == _of(bundled_frames, "ethusdt@trade")


def test_subscribe_list_and_unsubscribe_methods(bundled_frames: list[RawFrame]) -> None:
    btc = [_data(p) for p in _of(bundled_frames, "btcusdt@trade")]
    eth = [_data(p) for p in _of(bundled_frames, "ethusdt@trade")]

    async def main() -> None:
        async with BinanceEmulator() as emu, _connect(emu.url + "/ws") as ws:
            await ws.send('{"method":"SUBSCRIBE","params":["ethusdt@trade"],"id":1}')
            assert json.loads(await ws.recv()) == {"result": None, "id": 1}
            assert await _recv(ws, 10) == eth[:10]
            await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":2}')
            listed, _ = await _reply(ws, 2)
            assert listed == {"result": ["ethusdt@trade"], "id": 2}
            await ws.send('{"method":"UNSUBSCRIBE","params":["ethusdt@trade"],"id":3}')
            await ws.send('{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":"four"}')
            await _reply(ws, 3)
            assert (await _reply(ws, "four"))[0] == {"result": None, "id": "four"}
            after = await _recv(ws, 20)
            # Only BTC from here on, in recording order.
            start = btc.index(after[0])
            assert after == btc[start : start + 20]
            await ws.send('{"method":"NOPE","id":5}')
            error, _ = await _reply(ws, 5)
            assert error["code"] == 2
            assert emu.rate_limited == 0

    asyncio.run(main())


def test_unknown_path_is_refused_at_the_handshake() -> None:
    async def main() -> tuple[int, int]:
        async with BinanceEmulator() as emu:
            with pytest.raises(InvalidStatus) as missing:
                await connect(emu.url + "/api/v3/depth")
            with pytest.raises(InvalidStatus) as micro:
                await connect(emu.url + BOTH + "&timeUnit=MICROSECOND")
            return missing.value.response.status_code, micro.value.response.status_code

    assert asyncio.run(main()) == (404, 400)


def test_more_than_the_incoming_message_limit_per_second_disconnects() -> None:
    async def main() -> tuple[int, int | None, int]:
        config = ReplayConfig(max_client_messages_per_s=5)
        async with BinanceEmulator(config) as emu, _connect(emu.url + "/ws") as ws:
            for i in range(6):
                await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
            replies = await _until_closed(ws)
            return len(replies), ws.close_code, emu.rate_limited

    assert asyncio.run(main()) == (5, 1008, 1)


def _paced_recording(path: Path, n: int, step_us: int) -> list[bytes]:
    frames = []
    with RecordingWriter(path) as writer:
        for i, frame in enumerate(read_recording(BUNDLED_BINANCE_TRADES)):
            if i == n:
                break
            writer.write(frame.frame, 1_723_161_255_000_000 + i * step_us)
            frames.append(frame.frame.encode())
    return frames


@pytest.mark.parametrize(("speed", "span_s"), [(1.0, 1.0), (5.0, 0.2)])
def test_speed_replays_at_the_recorded_pace_scaled(tmp_path: Path, speed: float, span_s: float) -> None:
    """Frame i never arrives before i * step after the replay started. Measured from a time taken
    before connecting (the replay's clock starts later), so a busy machine can only make frames
    later, never make the check fail; how late they may be is a performance figure, not asserted."""
    expected = _paced_recording(tmp_path / "paced.jsonl.gz", 21, 50_000)  # 21 frames, 50 ms apart: 1 s

    async def main() -> tuple[list[bytes], float, list[float]]:
        config = ReplayConfig(recording=tmp_path / "paced.jsonl.gz", speed=speed)
        async with BinanceEmulator(config) as emu:
            before = time.monotonic()
            async with _connect(emu.url + BOTH) as ws:
                got, times = [], []
                for _ in expected:
                    got.append(await asyncio.wait_for(ws.recv(decode=False), 10))
                    times.append(time.monotonic())
                return got, before, times

    got, before, times = asyncio.run(main())
    assert got == expected
    step = span_s / 20
    for i, t in enumerate(times):
        assert t - before >= i * step - 1e-3  # never early (the emulator sends up to 0.5 ms ahead)


def test_as_fast_as_possible_respects_backpressure() -> None:
    """A client that stops reading stops the replay (bounded buffers), even when looping forever."""

    async def main() -> tuple[int, int]:
        config = ReplayConfig(loop=True)
        async with BinanceEmulator(config) as emu, _connect(emu.url + BOTH, max_queue=4) as ws:
            await _recv(ws, 10)

            async def stalled() -> int:
                before = emu.replayed
                await asyncio.sleep(0.3)
                assert emu.replayed == before
                return before + 1  # truthy

            stalled_at = await eventually_async(stalled, timeout=20)
            return stalled_at - 1, emu.replays_completed

    replayed, completed = asyncio.run(main())
    assert 10 <= replayed < 20 * TOTAL
    assert completed < 20


def test_faults_over_the_wire_match_the_pure_plan_and_the_parser_reasons() -> None:
    faults = Faults(duplicate_every=997, reorder_every=1499, malformed_every=701)
    plan = list(replay_frames(read_recording(BUNDLED_BINANCE_TRADES), faults, {}))

    async def main() -> tuple[list[bytes], dict[str, int], int]:
        async with BinanceEmulator(ReplayConfig(faults=faults)) as emu, _connect(emu.url + BOTH) as ws:
            got = await _recv(ws, len(plan))
            await asyncio.wait_for(emu.wait_finished(), 10)
            return got, dict(emu.injected), emu.frames_sent

    got, injected, sent = asyncio.run(main())
    assert got == [o.combined for o in plan]
    assert sent == len(plan)
    assert injected["duplicate"] == TOTAL // 997
    assert injected["reorder"] == TOTAL // 1499
    assert sum(injected[k] for k in MALFORMED_KINDS) == (TOTAL + TOTAL // 997) // 701
    batch = parse_canonical(
        "binance",
        [RawFrame(p, AFTER_RECORDING_US + i) for i, p in enumerate(got)],
        symbols=["BTCUSDT", "ETHUSDT"],
        first_sequence=1,
        is_sample_data=True,
    )
    assert Counter(r.reason for r in batch.rejected) == {RejectReason(k): injected[k] for k in MALFORMED_KINDS}
    assert batch.rows("trades") == TOTAL + injected["duplicate"]


@pytest.mark.parametrize("path", ["/stream?streams=btcusdt@trade", "/ws/btcusdt@trade"])
def test_adversarial_frames_reach_a_client_of_the_real_stream_even_when_they_name_a_foreign_one(path: str) -> None:
    """Only btcusdt@trade is subscribed: every adversarial frame built from a BTCUSDT frame is still
    delivered on it (including those naming a foreign stream or symbol), and the parser, subscribed
    to BTCUSDT only, quarantines each with the reason its kind maps to."""
    faults = Faults(adversarial_every=50)
    plan = [o for o in replay_frames(read_recording(BUNDLED_BINANCE_TRADES), faults, {}) if o.stream == "btcusdt@trade"]
    combined = path.startswith("/stream")

    async def main() -> tuple[list[bytes], dict[str, int]]:
        async with BinanceEmulator(ReplayConfig(faults=faults)) as emu, _connect(emu.url + path) as ws:
            got = await _recv(ws, len(plan))
            await asyncio.wait_for(emu.wait_finished(), 10)
            return got, dict(emu.injected)

    got, injected = asyncio.run(main())
    assert got == [o.combined if combined else o.raw for o in plan]
    sent_kinds = Counter(o.kind for o in plan if o.kind in ADVERSARIAL_KINDS)
    assert set(sent_kinds) == set(ADVERSARIAL_KINDS), "every adversarial kind went to the BTCUSDT client"
    assert all(injected[k] >= sent_kinds[k] for k in ADVERSARIAL_KINDS)
    batch = parse_canonical(
        "binance",
        [RawFrame(p, AFTER_RECORDING_US) for p in got],
        symbols=["BTCUSDT"],
        first_sequence=1,
        is_sample_data=True,
    )
    expected: Counter[RejectReason] = Counter()
    for kind, n in sent_kinds.items():
        expected[EXPECTED_REASON[kind]] += n
    assert Counter(r.reason for r in batch.rejected) == expected
    assert batch.rows("trades") == BTC


@pytest.mark.parametrize("code", [None, 1011])
def test_injected_disconnect_then_reconnect_continues_from_the_shared_cursor(
    bundled_frames: list[RawFrame], code: int | None
) -> None:
    async def main() -> tuple[list[bytes], ConnectionClosed, list[bytes], dict[str, object]]:
        faults = Faults(disconnect_after=(100,), disconnect_code=code)
        async with BinanceEmulator(ReplayConfig(faults=faults)) as emu:
            async with _connect(emu.url + BOTH) as ws:
                first = await _until_closed(ws)
                dropped = ws.protocol.close_exc
            async with _connect(emu.url + BOTH) as ws:
                rest = await _recv(ws, TOTAL - len(first))
            return first, dropped, rest, emu.stats()

    first, dropped, rest, stats = asyncio.run(main())
    expected = [f.payload for f in bundled_frames]
    assert first == expected[:100]
    assert rest == expected[100:]
    assert isinstance(dropped, ConnectionClosedError)
    if code is None:
        assert dropped.rcvd is None  # no close frame: the client sees 1006
    else:
        assert dropped.rcvd is not None
        assert dropped.rcvd.code == code
    assert stats["disconnects_injected"] == 1
    assert stats["injected"]["disconnect"] == 1  # type: ignore[index]
    assert stats["connections"] == 2


def test_loop_starts_over(bundled_frames: list[RawFrame]) -> None:
    async def main() -> tuple[list[bytes], int]:
        async with BinanceEmulator(ReplayConfig(loop=True)) as emu, _connect(emu.url + BOTH) as ws:
            got = await _recv(ws, TOTAL + 5)
            return got, emu.replays_completed

    got, completed = asyncio.run(main())
    assert got[TOTAL:] == [f.payload for f in bundled_frames[:5]]
    assert completed >= 1


def test_server_pings_and_the_client_pongs() -> None:
    async def main() -> float:
        config = ReplayConfig(ping_interval_s=0.05, ping_timeout_s=2.0)
        async with BinanceEmulator(config) as emu, _connect(emu.url + "/ws"):

            async def latency() -> float:
                assert emu.server is not None
                return max((c.latency for c in emu.server.connections), default=0.0)

            return await eventually_async(latency)

    assert asyncio.run(main()) > 0


def test_invalid_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="speed"):
        ReplayConfig(speed=0)
    with pytest.raises(ConfigError, match="min_clients"):
        ReplayConfig(min_clients=0)


def test_looping_over_a_recording_with_nothing_to_replay_fails_instead_of_spinning(tmp_path: Path) -> None:
    empty = tmp_path / "controls.jsonl.gz"
    with RecordingWriter(empty) as writer:
        writer.write('{"result":null,"id":1}', 1)

    async def main() -> None:
        async with BinanceEmulator(ReplayConfig(recording=empty, loop=True)) as emu, _connect(emu.url + BOTH):
            await asyncio.wait_for(emu.wait_finished(), 10)

    with pytest.raises(RecordingError, match="nothing to replay"):
        asyncio.run(main())


def test_missing_recording_fails_at_start(tmp_path: Path) -> None:
    async def main() -> None:
        async with BinanceEmulator(ReplayConfig(recording=tmp_path / "nope.jsonl.gz")):
            pass

    with pytest.raises(RecordingError, match="not found"):
        asyncio.run(main())


def test_emulator_thread_serves_a_client_running_its_own_loop(bundled_frames: list[RawFrame]) -> None:
    async def client(url: str) -> list[bytes]:
        async with _connect(url + BOTH) as ws:
            return await _recv(ws, TOTAL)

    with EmulatorThread(ReplayConfig()) as emu:
        got = asyncio.run(client(emu.url))
        assert emu.wait_finished(10)
        assert emu.finished
        assert emu.frames_sent == TOTAL
        assert emu.replayed == TOTAL
    assert got == [f.payload for f in bundled_frames]


def test_emulator_process_serves_from_a_child_process(bundled_frames: list[RawFrame]) -> None:
    async def client(url: str) -> list[bytes]:
        async with _connect(url + BOTH) as ws:
            return await _recv(ws, 50)

    emu = EmulatorProcess(ReplayConfig())
    url = emu.start()
    try:
        assert url.startswith("ws://127.0.0.1:")
        assert asyncio.run(client(url)) == [f.payload for f in bundled_frames[:50]]
    finally:
        emu.stop()
    eventually(lambda: emu._proc is None)


class _HeldRest:
    """A REST side whose answers wait for ``released`` (as one that first indexes a long recording);
    ``answered`` is set once an answer has been worked out."""

    def __init__(self, inner: RestSide) -> None:
        self.inner, self.requests = inner, inner.requests
        self.entered, self.released, self.answered = threading.Event(), threading.Event(), threading.Event()

    def handle(self, target: str) -> RestResponse | None:
        if target.startswith("/api/"):
            self.entered.set()
            self.released.wait(60)
            self.answered.set()
        return self.inner.handle(target)


def test_a_rest_answer_that_takes_long_does_not_hold_up_the_websocket_side(bundled_frames: list[RawFrame]) -> None:
    """While a REST request is being answered, clients still connect and the replay goes on."""

    async def main() -> tuple[list[bytes], bool]:
        async with BinanceEmulator() as emu:
            assert emu.rest is not None
            held = emu.rest = _HeldRest(emu.rest)
            ping = "http" + emu.url.removeprefix("ws") + "/api/v3/ping"
            answer = asyncio.ensure_future(asyncio.to_thread(urllib.request.urlopen, ping, timeout=60))
            try:
                assert await asyncio.to_thread(held.entered.wait, 30)
                async with _connect(emu.url + BOTH) as ws:
                    got = await _recv(ws, 100)
                # The held answer itself, not the HTTP request: the server's handshake timeout (10 s) may
                # drop a request held longer on a busy machine, which must not decide this test.
                pending = not held.answered.is_set()
            finally:
                held.released.set()
                await asyncio.gather(answer, return_exceptions=True)  # not asserted, as above
            return got, pending

    got, pending = asyncio.run(main())
    assert got == [f.payload for f in bundled_frames[:100]]
    assert pending  # the frames came while the REST answer was still held
