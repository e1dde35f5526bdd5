"""A local WebSocket server speaking a venue's stream protocol, replaying a recording.

The venue's own part (handshake, greeting, control replies, heartbeats, framing, bad frames, REST) is
its emulator protocol (:class:`k2.emulator.contract.EmulatorProtocol`; Binance's by default). A
client receives only the streams it subscribed to. One replay cursor is shared by all connections,
and a frame that could not be delivered waits for the next connection, so a client that reconnects
after an injected disconnect carries on where the stream stopped. In *live* mode the cursor moves on
at the replay pace whether anyone is connected or not, and a frame nobody received is gone from the
stream (the REST side still serves it), as on a real venue. See docs/emulator.md.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import http
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from k2.emulator.binance import BinanceProtocol
from k2.emulator.contract import EmulatorProtocol, RestSide
from k2.emulator.faults import DISCONNECT, FRAME, INJECTED_KINDS, Faults, OutFrame, apply_faults, routable_frames
from k2.emulator.protocol import PathError
from k2.emulator.recording import BUNDLED_BINANCE_TRADES, read_recording
from k2.emulator.rest import RestResponse
from k2.errors import ConfigError, RecordingError
from k2.logging import get_logger

log = get_logger(__name__)

_YIELD_EVERY = 256  # frames sent between forced yields to the event loop when the socket never blocks
_BATCH = 128  # frames framed into one socket write


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """How to replay: which recording, how fast, which faults, in which venue's protocol.

    ``speed=None`` sends as fast as clients read (write backpressure applies), ``1.0`` at the
    recorded pace (from the ``recv_us`` deltas), ``N`` N times faster. The replay starts when
    ``min_clients`` connections hold a subscription (raise it when a test opens several). With
    ``live=True`` (a ``speed`` is then required) it never waits again after that: frames due while
    no client is subscribed, or whose connection just went, are skipped (counted in ``missed``).
    """

    recording: Path = BUNDLED_BINANCE_TRADES
    speed: float | None = None
    loop: bool = False
    faults: Faults = field(default_factory=Faults)
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 60.0
    max_client_messages_per_s: int | None = None  # None: the protocol's own limit
    min_clients: int = 1
    preload: bool = False  # decode the whole recording before listening (benchmarks measure the client)
    live: bool = False
    # Stop the cursor before this recorded frame (1-based, delivered or missed) until release():
    # lets a test line something up with the stream without racing it.
    hold_at: int | None = None
    protocol: EmulatorProtocol = field(default_factory=BinanceProtocol)  # the venue's (k2.emulator.contract)

    def __post_init__(self) -> None:
        if self.speed is not None and self.speed <= 0:
            raise ConfigError("speed must be positive (or None for as fast as possible)")
        if self.live and self.speed is None:
            raise ConfigError("live mode needs a pace: give a speed")
        if self.min_clients < 1:
            raise ConfigError("min_clients must be >= 1")
        if self.max_client_messages_per_s is not None and self.max_client_messages_per_s < 1:
            raise ConfigError("max_client_messages_per_s must be >= 1")


@dataclass(eq=False)
class _Client:
    ws: ServerConnection
    framing: str  # the protocol's: how this client's frames look (Binance: combined or raw)
    streams: dict[str, None]  # insertion-ordered set
    recent: collections.deque[float]
    # monotonic time of the last replayed frame written to it, or of its connection (heartbeat()'s idle_s)
    last_frame: float = field(default_factory=time.monotonic)


class BinanceEmulator:
    """Replays a recording over a local WebSocket. Use ``async with BinanceEmulator(config) as emu``.

    Counters for tests: ``replayed`` (recorded frames delivered: the cursor), ``missed`` (recorded
    frames due that no client received: unsubscribed streams, and in live mode no client),
    ``frames_sent`` (all replayed frames written to clients, duplicates and bad frames included, per
    connection), ``control_sent`` (frames the protocol made up: greetings, replies to control messages,
    heartbeats), ``connections``, ``disconnects_injected``, ``rate_limited``, ``replays_completed``
    and ``injected`` (by kind).
    """

    def __init__(self, config: ReplayConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or ReplayConfig()
        self.host = host
        self.port = port
        self.finished = asyncio.Event()
        self.error: BaseException | None = None
        self.replayed = 0
        self.missed = 0
        self.frames_sent = 0
        self.control_sent = 0
        self.connections = 0
        self.disconnects_injected = 0
        self.rate_limited = 0
        self.replays_completed = 0
        self.injected: dict[str, int] = dict.fromkeys(INJECTED_KINDS, 0)
        self._server: Server | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._clients: set[_Client] = set()
        self._subs: dict[str, tuple[_Client, ...]] = {}
        self._subscribed_changed = asyncio.Event()
        self._disconnect_at = set(self.config.faults.disconnect_after)
        self._closers: set[asyncio.Task[None]] = set()
        self._decoded: list[OutFrame] | None = None
        self._started = False  # live mode: the first client came, the feed never waits again
        self._released = asyncio.Event()
        if self.config.hold_at is None:
            self._released.set()
        self.protocol = self.config.protocol
        self._client_messages_per_s = self.config.max_client_messages_per_s or self.protocol.max_client_messages_per_s
        self.rest: RestSide | None = self.protocol.rest(self.config.recording, self.config.faults)
        """The REST side (e.g. ``/api/v3/...`` on the same port); ``rest.requests`` logs every request."""
        self._rest_turn = threading.Lock()  # REST answers one at a time (see _answer_rest)

    # --- lifecycle --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL, e.g. ``ws://127.0.0.1:54321`` (adapters append ``/stream?streams=...``)."""
        if self._server is None:
            raise RuntimeError("emulator not started")
        return f"ws://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        """Base URL of the REST endpoints (same port), e.g. ``http://127.0.0.1:54321``."""
        return "http" + self.url[2:]

    @property
    def server(self) -> Server | None:
        """The underlying websockets server (its ``connections`` expose ping latency)."""
        return self._server

    async def start(self) -> str:
        if not self.config.recording.exists():
            raise RecordingError(f"recording not found: {self.config.recording}")
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            compression=None,
            ping_interval=self.config.ping_interval_s,
            ping_timeout=self.config.ping_timeout_s,
            max_size=2**16,
            close_timeout=2.0,
            write_limit=2**18,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if self.config.preload and self._decoded is None:
            self._decoded = await asyncio.to_thread(
                lambda: list(routable_frames(read_recording(self.config.recording), self.protocol.route))
            )
        self._pump_task = asyncio.create_task(self._pump(), name="emulator-replay")
        log.info("emulator.started", url=self.url, recording=str(self.config.recording), speed=self.config.speed)
        return self.url

    async def close(self) -> None:
        if self._pump_task is not None:
            self._pump_task.cancel()
            await asyncio.gather(self._pump_task, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> BinanceEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def release(self) -> None:
        """Let the cursor go on past ``hold_at``."""
        self._released.set()

    def _feed_position(self, sent: int) -> int:
        """Where a ``disconnect_after`` position is counted: frames sent, and in a live replay also the
        frames missed, so a live venue drops at a moment of its feed whatever the client missed before."""
        return sent + self.missed if self.config.live else sent

    def _holding(self, out: OutFrame, earlier: int) -> bool:
        """True when ``out``, with ``earlier`` recorded frames taken before it, must wait for release()."""
        hold = self.config.hold_at
        return hold is not None and out.kind == FRAME and earlier + 1 >= hold and not self._released.is_set()

    async def wait_finished(self) -> None:
        """Wait until the recording has been replayed (raises if the replay failed)."""
        await self.finished.wait()
        if self.error is not None:
            raise self.error

    def stats(self) -> dict[str, Any]:
        return {
            "url": self.url if self._server else None,
            "replayed": self.replayed,
            "missed": self.missed,
            "frames_sent": self.frames_sent,
            "control_sent": self.control_sent,
            "connections": self.connections,
            "open_connections": len(self._clients),
            "disconnects_injected": self.disconnects_injected,
            "rate_limited": self.rate_limited,
            "replays_completed": self.replays_completed,
            "finished": self.finished.is_set(),
            "injected": dict(self.injected),
        }

    # --- connections --------------------------------------------------------------------------------
    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            self.protocol.open(request.path)
            return None  # a WebSocket path: the handshake goes on
        except PathError as exc:
            refused = exc
        rest = None
        if self.rest is not None:
            # Off the event loop: an answer may first index the whole recording (exchangeInfo lists its
            # symbols, historicalTrades pages its trades), minutes for a long one, and the replay and
            # the WebSocket handshakes must go on meanwhile.
            rest = await asyncio.to_thread(self._answer_rest, self.rest, request.path)
        if rest is None:
            return connection.respond(refused.status, refused.text)
        if rest.delay_s:
            await asyncio.sleep(rest.delay_s)
        return _http_response(rest)

    def _answer_rest(self, rest: RestSide, target: str) -> RestResponse | None:
        """One REST answer, on a worker thread. The lock is taken here, not by the awaiting handshake:
        when a handshake times out the thread goes on, and the next answer still waits for it (a REST
        side's state, its request log and lazily built index, is not shared)."""
        with self._rest_turn:
            return rest.handle(target)

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        framing, streams = self.protocol.open(ws.request.path)
        client = _Client(ws, framing, {}, collections.deque(maxlen=self._client_messages_per_s))
        self.connections += 1
        interval_s = self.protocol.heartbeat_interval_s
        beats = None
        try:
            if not await self._send_control(client, self.protocol.greeting()):  # before any stream frame
                return
            self._clients.add(client)
            self._subscribe(client, streams)
            log.debug("emulator.connected", path=ws.request.path, streams=len(streams))
            if interval_s is not None:
                beats = asyncio.create_task(self._heartbeats(client, interval_s), name="emulator-heartbeats")
            async for message in ws:
                if self._over_limit(client):
                    self.rate_limited += 1
                    log.info("emulator.rate_limited", limit=self._client_messages_per_s)
                    await ws.close(1008, "too many requests")
                    return
                answer = self.protocol.control(list(client.streams), message)
                self._subscribe(client, list(answer.subscribe))
                self._unsubscribe(client, list(answer.unsubscribe))
                await self._send_control(client, [r for r in (answer.reply, *answer.more) if r is not None])
        except ConnectionClosed:
            pass
        finally:
            if beats is not None:
                beats.cancel()
            self._forget(client)

    async def _send_control(self, client: _Client, payloads: list[bytes]) -> bool:
        """The protocol's own frames (greeting, replies, heartbeats), counted in ``control_sent``;
        False when the connection is gone."""
        if not payloads:
            return True
        if not await self._write(client, payloads):
            return False
        self.control_sent += len(payloads)
        return True

    async def _heartbeats(self, client: _Client, interval_s: float) -> None:
        """Every ``interval_s`` while the connection lasts: what the protocol's ``heartbeat`` gives it."""
        while True:
            await asyncio.sleep(interval_s)
            idle_s = time.monotonic() - client.last_frame
            beats = self.protocol.heartbeat(list(client.streams), idle_s, time.time_ns() // 1000)
            if not await self._send_control(client, beats):
                return

    def _over_limit(self, client: _Client) -> bool:
        """The venue's incoming limit: more than ``max_client_messages_per_s`` messages within one second
        close the connection (1008)."""
        now = time.monotonic()
        recent = client.recent
        over = len(recent) == recent.maxlen and now - recent[0] < 1.0
        recent.append(now)
        return over

    def _subscribe(self, client: _Client, streams: list[str]) -> None:
        for stream in streams:
            if stream not in client.streams:
                client.streams[stream] = None
                self._subs[stream] = (*self._subs.get(stream, ()), client)
        if streams:
            self._subscribed_changed.set()

    def _unsubscribe(self, client: _Client, streams: list[str]) -> None:
        for stream in streams:
            if client.streams.pop(stream, 0) is None:
                remaining = tuple(c for c in self._subs[stream] if c is not client)
                if remaining:
                    self._subs[stream] = remaining
                else:
                    del self._subs[stream]

    def _forget(self, client: _Client) -> None:
        if client in self._clients:
            self._unsubscribe(client, list(client.streams))
            self._clients.discard(client)

    def _subscribed_clients(self) -> int:
        return sum(1 for c in self._clients if c.streams)

    def _drop_all(self) -> None:
        """Injected disconnect: every subscribed connection goes, after what was already written."""
        code = self.config.faults.disconnect_code
        for client in [c for c in self._clients if c.streams]:
            self._forget(client)
            if code is None:
                client.ws.transport.close()  # flushes written frames, then FIN without a close frame
            else:
                task = asyncio.create_task(client.ws.close(code, "injected disconnect"))
                self._closers.add(task)
                task.add_done_callback(self._closers.discard)
        self.disconnects_injected += 1
        self.injected[DISCONNECT] += 1

    # --- replay -----------------------------------------------------------------------------------
    async def _wait_for_clients(self) -> bool:
        """Block until enough clients are subscribed; True when it had to wait. In live mode only
        the first time: after that the feed moves on whoever is connected."""
        if self.config.live and self._started:
            return False
        self._started = True
        waited = False
        while self._subscribed_clients() < self.config.min_clients:
            waited = True
            self._subscribed_changed.clear()
            await self._subscribed_changed.wait()
        return waited

    async def _pump(self) -> None:
        try:
            while True:
                await self._replay_once()
                self.replays_completed += 1
                if self.config.loop and not self._decoded:
                    raise RecordingError(f"nothing to replay in {self.config.recording}")
                log.info("emulator.replay_finished", replayed=self.replayed, frames_sent=self.frames_sent)
                if not self.config.loop:
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = exc
            log.error("emulator.replay_failed", error=str(exc))
        self.finished.set()

    async def _replay_once(self) -> None:
        loop = asyncio.get_running_loop()
        speed = self.config.speed
        if self._decoded is not None:  # looping: later passes reuse the decoded recording
            frames: Iterable[OutFrame] = self._decoded
        elif self.config.loop:
            self._decoded = list(routable_frames(read_recording(self.config.recording), self.protocol.route))
            frames = self._decoded
        else:
            frames = routable_frames(read_recording(self.config.recording), self.protocol.route)
        source = apply_faults(frames, self.config.faults, self.injected, self.protocol)
        pending: collections.deque[OutFrame] = collections.deque()  # frames taken but not yet delivered
        t0: float | None = None
        r0 = 0
        since_yield = 0
        while True:
            if not pending:
                head = next(source, None)
                if head is None:
                    return
                pending.append(head)
            if self._holding(pending[0], self.replayed + self.missed):
                await self._released.wait()
                t0 = None
            if await self._wait_for_clients():
                t0 = None  # resume at the recorded pace from here, not with a burst
            due_us: float | None = None
            if speed is not None:
                now = loop.time()
                if t0 is None:
                    t0, r0 = now, pending[0].recv_us
                delay = t0 + (pending[0].recv_us - r0) / 1e6 / speed - now
                if delay > 0.0005:
                    await asyncio.sleep(delay)
                    since_yield = 0
                    continue  # clients may have come or gone meanwhile
                due_us = r0 + (now - t0 + 0.0005) * speed * 1e6
            batch = self._take_batch(pending, source, due_us)
            if batch:
                since_yield += await self._deliver(batch, pending)
            if since_yield >= _YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)

    def _take_batch(
        self, pending: collections.deque[OutFrame], source: Iterator[OutFrame], due_us: float | None
    ) -> list[OutFrame]:
        """Frames to send now: up to _BATCH, only those due, ending at an injected-disconnect point.

        Frames of streams nobody is subscribed to are dropped here, as a live feed would.
        """
        batch: list[OutFrame] = []
        position = self.replayed
        subs = self._subs
        taken = 0  # the first frame is due (the caller waited for it); the others are checked
        while len(batch) < _BATCH:
            if pending:
                out = pending[0]
            else:
                nxt = next(source, None)
                if nxt is None:
                    break
                out = nxt
                pending.append(out)
            if (due_us is not None and taken and out.recv_us > due_us) or self._holding(out, position + self.missed):
                break
            taken += 1
            pending.popleft()
            if out.stream not in subs:
                self.missed += out.kind == FRAME
                continue
            batch.append(out)
            if out.kind == FRAME:
                position += 1
                if self._feed_position(position) in self._disconnect_at:
                    break
        return batch

    async def _deliver(self, batch: list[OutFrame], pending: collections.deque[OutFrame]) -> int:
        """Send a batch to its subscribers; frames nobody received go back to ``pending``."""
        plan: dict[_Client, tuple[list[bytes], list[int]]] = {}
        for i, out in enumerate(batch):
            for client in self._subs.get(out.stream or "", ()):
                entry = plan.get(client)
                if entry is None:
                    entry = plan[client] = ([], [])
                entry[0].append(self.protocol.payload(out, client.framing))
                entry[1].append(i)
        delivered = [False] * len(batch)
        sent = 0
        for client, (payloads, indexes) in plan.items():
            if await self._write(client, payloads):
                client.last_frame = time.monotonic()
                sent += len(payloads)
                for i in indexes:
                    delivered[i] = True
        self.frames_sent += sent
        undelivered = [out for out, ok in zip(batch, delivered, strict=True) if not ok]
        if self.config.live:  # a live venue does not keep what a dropped connection did not get
            self.missed += sum(out.kind == FRAME for out in undelivered)
        else:
            pending.extendleft(reversed(undelivered))
        for out, ok in zip(batch, delivered, strict=True):
            if ok and out.kind == FRAME:
                self.replayed += 1
                if self._feed_position(self.replayed) in self._disconnect_at:
                    self._drop_all()
        return sent

    async def _write(self, client: _Client, payloads: list[bytes]) -> bool:
        """Frame all payloads and write them at once; the last goes through send() for backpressure."""
        ws = client.ws
        protocol = ws.protocol
        try:
            if protocol.state is not State.OPEN:
                raise ConnectionClosed(None, None)
            if len(payloads) > 1:
                for payload in payloads[:-1]:
                    protocol.send_text(payload)
                ws.transport.write(b"".join(protocol.data_to_send()))
            await ws.send(payloads[-1], text=True)  # the last one through send(): it drains when paused
        except ConnectionClosed:
            self._forget(client)
            return False
        return True


def _http_response(rest: RestResponse) -> Response:
    status = http.HTTPStatus(rest.status)
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(rest.body))),
            *rest.headers,
        ]
    )
    return Response(status.value, status.phrase, headers, rest.body)


async def serve_forever(config: ReplayConfig, host: str = "127.0.0.1", port: int = 9443) -> None:
    """Run an emulator until cancelled (the ``k2 emulator`` command), logging its URL."""
    async with BinanceEmulator(config, host, port) as emu:
        example = emu.url + emu.protocol.example_target
        log.info("emulator.listening", url=emu.url, venue=emu.protocol.name, example=example)
        await asyncio.Event().wait()


class EmulatorThread:
    """A :class:`BinanceEmulator` on its own event loop in a daemon thread of this process.

    For callers that run their own loop (the demo): ``with EmulatorThread(config) as emu:`` then
    connect to ``emu.url``. Counters are read from the emulator (plain ints, safe to read). The
    emulator shares this process's GIL; :class:`k2.emulator.runner.EmulatorProcess` does not.
    """

    def __init__(self, config: ReplayConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.emulator = BinanceEmulator(config, host, port)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._done = threading.Event()
        self._startup_error: BaseException | None = None

    def start(self, timeout_s: float = 10.0) -> str:
        """Start serving; returns the base URL once the server listens."""
        self._thread = threading.Thread(target=self._main, name="k2-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("emulator thread did not start in time")
        if self._startup_error is not None:
            raise self._startup_error
        return self.emulator.url

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> EmulatorThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self.emulator.url

    def release(self) -> None:
        """:meth:`BinanceEmulator.release`, from any thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.emulator.release)

    @property
    def finished(self) -> bool:
        """True once the whole recording has been replayed."""
        return self._done.is_set()

    def wait_finished(self, timeout_s: float | None = None) -> bool:
        return self._done.wait(timeout_s)

    @property
    def frames_sent(self) -> int:
        return self.emulator.frames_sent

    @property
    def replayed(self) -> int:
        return self.emulator.replayed

    def stats(self) -> dict[str, Any]:
        return self.emulator.stats()

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.emulator.start()
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        waiter = asyncio.create_task(self.emulator.finished.wait())
        waiter.add_done_callback(lambda _: self._done.set())
        try:
            await self._stop.wait()
        finally:
            waiter.cancel()
            await self.emulator.close()


__all__ = ["BinanceEmulator", "EmulatorThread", "Faults", "ReplayConfig", "serve_forever"]
