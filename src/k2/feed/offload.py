"""ParseProcess: a venue parser run in a child process, so that parsing uses a second core.

One Python process cannot receive and parse at once (the GIL): the WebSocket receive path and the
parser each take about half of the pipeline process's time. With ``source.parse_process`` the feed
hands each batch of frames to a child process that runs the same parser and sends back the
:class:`~k2.sources.base.ParsedBatch`; meanwhile the parent keeps reading sockets. Parsers are pure
(no clock, no I/O, no state between batches), so the rows and rejects are the ones the parent would
have computed; completeness, stamping and the sink stay in the parent, in frame order.

A batch goes over a pipe as two lists (payloads, receive times) in one pickle, the result as the
pickled batch (Arrow buffers). The child starts with ``spawn``, dies with its parent
(``PR_SET_PDEATHSIG``, also on ``kill -9``) and exits when told to stop (:meth:`close`) or when its
pipe closes. If the child dies or fails, :meth:`parse` raises :class:`~k2.errors.ParseProcessError`:
the run stops, and what it received but did not commit is found again on restart, as after any crash
(the committed state, then gaps and backfill; exactly once holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
import pickle
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection

from k2.children import die_with_parent
from k2.errors import ParseProcessError
from k2.logging import get_logger
from k2.sources.base import ParsedBatch, RawFrame
from k2.sources.venue import VenueParser

log = get_logger(__name__)

_PROTOCOL = pickle.HIGHEST_PROTOCOL


def serve(conn: Connection, parser: VenueParser, parent: int) -> None:
    """The child's body: parse each batch that arrives until the pipe closes."""
    die_with_parent(parent)
    gc.collect()  # start-up's garbage freed, not frozen (as k2.services.lifecycle.freeze_start_up)
    gc.freeze()  # the modules and the parser live as long as the process: never scanned again
    while True:
        try:
            request = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not request:  # the parent's close()
            return
        payloads, received = pickle.loads(request)  # noqa: S301 - our own parent's bytes over a private pipe
        try:
            parsed: ParsedBatch | str = parser.parse([RawFrame(p, t) for p, t in zip(payloads, received, strict=True)])
        except Exception as exc:  # a parser bug: reported to the parent, which stops the run
            parsed = f"{type(exc).__name__}: {exc}"
        conn.send_bytes(pickle.dumps(parsed, _PROTOCOL))


class ParseProcess:
    """``parser`` in a child process. :meth:`parse` may be awaited for several batches at once: each batch
    is sent in turn by one thread while another reads the child's replies, which come in the order the
    batches were sent and settle the waiting callers in that order. A caller that stops waiting does
    not disturb the pairing (its reply is read and dropped)."""

    CLOSE_TIMEOUT_S = 30.0

    def __init__(self, parser: VenueParser, name: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_end = context.Pipe()
        self._process = context.Process(
            target=serve, args=(child_end, parser, os.getpid()), name=f"k2-parse-{name}", daemon=True
        )
        self._process.start()
        child_end.close()
        self.name = name
        self._sender = ThreadPoolExecutor(1, thread_name_prefix=f"k2-parse-{name}-send")
        self._waiting: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[ParsedBatch]]] = deque()
        self._lock = threading.Lock()  # appends (sender) and pops (receiver) of _waiting
        self._settled = threading.Condition(self._lock)
        self._failure: ParseProcessError | None = None
        self._receiver = threading.Thread(target=self._receive_all, name=f"k2-parse-{name}-receive", daemon=True)
        self._receiver.start()
        log.info("parse_process.started", venue=name, pid=self._process.pid)

    async def parse(self, frames: list[RawFrame]) -> ParsedBatch:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[ParsedBatch] = loop.create_future()
        reply.add_done_callback(_retrieved)
        request = pickle.dumps(([f.payload for f in frames], [f.received_at_us for f in frames]), _PROTOCOL)
        self._sender.submit(self._send, request, loop, reply)
        return await asyncio.shield(reply)  # a cancelled caller leaves the reply to be read and dropped

    # --- the two threads ------------------------------------------------------------------------
    def _send(self, request: bytes, loop: asyncio.AbstractEventLoop, reply: asyncio.Future[ParsedBatch]) -> None:
        with self._lock:
            if self._failure is not None:
                loop.call_soon_threadsafe(_settle, reply, self._failure)
                return
            self._waiting.append((loop, reply))  # before the request goes: its reply may come at once
        try:
            self._conn.send_bytes(request)
        except OSError:
            self._process.kill()  # the receiver then reads end of file and fails every waiting caller

    def _receive_all(self) -> None:
        while True:
            try:
                outcome: ParsedBatch | str | ParseProcessError = pickle.loads(self._conn.recv_bytes())  # noqa: S301
            except (EOFError, OSError):
                outcome = self._gone()
            with self._lock:
                if isinstance(outcome, ParseProcessError):
                    self._failure = outcome
                    waiting, self._waiting = list(self._waiting), deque()
                else:
                    waiting = [self._waiting.popleft()] if self._waiting else []
                self._settled.notify_all()
            if isinstance(outcome, str):
                outcome = ParseProcessError(f"the parser of {self.name} failed in its process: {outcome}")
            for loop, reply in waiting:
                with contextlib.suppress(RuntimeError):  # a loop already closed: nobody is waiting there
                    loop.call_soon_threadsafe(_settle, reply, outcome)
            if self._failure is not None:
                return

    def _gone(self) -> ParseProcessError:
        self._process.join(timeout=5)  # its pipe closed: it has exited or is exiting
        code = self._process.exitcode
        state = "still running" if code is None else f"exit code {code}"
        return ParseProcessError(f"the parse process of {self.name} is gone ({state})")

    def close(self) -> None:
        """Stop the child and wait for it: the batches already sent are answered first (up to
        ``CLOSE_TIMEOUT_S``, then the child is killed), then it is told to stop and exits."""
        self._sender.shutdown(wait=True)
        with self._lock:
            self._settled.wait_for(lambda: not self._waiting or self._failure is not None, self.CLOSE_TIMEOUT_S)
            unanswered = bool(self._waiting) and self._failure is None
        if unanswered:
            self._process.kill()
        with contextlib.suppress(OSError):
            self._conn.send_bytes(b"")  # "stop": the child exits, and the receiver reads end of file
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._receiver.join(timeout=5)
        self._conn.close()


def _retrieved(reply: asyncio.Future[ParsedBatch]) -> None:
    """Mark a reply's error as seen (a caller that stopped waiting leaves it to the run's own error)."""
    if not reply.cancelled():
        reply.exception()


def _settle(reply: asyncio.Future[ParsedBatch], outcome: ParsedBatch | BaseException) -> None:
    if reply.done():
        return
    if isinstance(outcome, BaseException):
        reply.set_exception(outcome)
    else:
        reply.set_result(outcome)
