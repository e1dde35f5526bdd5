"""ParseProcess: a venue parser run in a child process, so that parsing uses a second core.

One Python process cannot receive and parse at once (the GIL): the WebSocket receive path and the
parser each take about half of the pipeline process's time. With ``source.parse_process`` the feed
hands each batch of frames to a child process that runs the same parser and sends back the
:class:`~k2.sources.base.ParsedBatch`; meanwhile the parent keeps reading sockets. Parsers are pure
(no clock, no I/O, no state between batches), so the rows and rejects are the ones the parent would
have computed; completeness, stamping and the sink stay in the parent, in frame order.

A batch goes over a pipe as two lists (payloads, receive times) in one pickle, the result as the
pickled batch (Arrow buffers). The child starts with ``spawn``, dies with its parent
(``PR_SET_PDEATHSIG``, also on ``kill -9``) and exits when its pipe closes (:meth:`close`). If the
child dies or fails, :meth:`parse` raises :class:`~k2.errors.ParseProcessError`: the run stops with
what it received unparsed and uncommitted, and a restart reads it again (exactly once holds).
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

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
    gc.freeze()  # the modules and the parser live as long as the process: never scanned again
    while True:
        try:
            request = conn.recv_bytes()
        except (EOFError, OSError):
            return
        payloads, received = pickle.loads(request)  # noqa: S301 - our own parent's bytes over a private pipe
        try:
            parsed: ParsedBatch | str = parser.parse([RawFrame(p, t) for p, t in zip(payloads, received, strict=True)])
        except Exception as exc:  # a parser bug: reported to the parent, which stops the run
            parsed = f"{type(exc).__name__}: {exc}"
        conn.send_bytes(pickle.dumps(parsed, _PROTOCOL))


class ParseProcess:
    """``parser`` in a child process. :meth:`parse` may be awaited for several batches at once: a batch
    is sent while earlier ones are being parsed (one thread sends, one receives), and the results
    come back in the order the batches were sent."""

    def __init__(self, parser: VenueParser, name: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_end = context.Pipe()
        self._process = context.Process(
            target=serve, args=(child_end, parser, os.getpid()), name=f"k2-parse-{name}", daemon=True
        )
        self._process.start()
        child_end.close()
        self._sender = ThreadPoolExecutor(1, thread_name_prefix=f"k2-parse-{name}-send")
        self._receiver = ThreadPoolExecutor(1, thread_name_prefix=f"k2-parse-{name}-receive")
        self.name = name
        log.info("parse_process.started", venue=name, pid=self._process.pid)

    async def parse(self, frames: list[RawFrame]) -> ParsedBatch:
        loop = asyncio.get_running_loop()
        sent = loop.run_in_executor(self._sender, self._send, frames)
        reply = loop.run_in_executor(self._receiver, self._receive)  # FIFO: the reply to this batch
        try:
            await sent
        finally:
            parsed = await reply  # (a failed send fails the receive too: the pipe is gone)
        return parsed

    def _send(self, frames: list[RawFrame]) -> None:
        request = pickle.dumps(([f.payload for f in frames], [f.received_at_us for f in frames]), _PROTOCOL)
        try:
            self._conn.send_bytes(request)
        except OSError as exc:
            raise self._gone() from exc

    def _receive(self) -> ParsedBatch:
        try:
            reply: Any = pickle.loads(self._conn.recv_bytes())  # noqa: S301 - our own child's bytes
        except (EOFError, OSError) as exc:
            raise self._gone() from exc
        if isinstance(reply, str):
            raise ParseProcessError(f"the parser of {self.name} failed in its process: {reply}")
        return reply  # type: ignore[no-any-return]

    def _gone(self) -> ParseProcessError:
        self._process.join(timeout=5)  # its pipe closed: it has exited or is exiting
        code = self._process.exitcode
        state = "still running" if code is None else f"exit code {code}"
        return ParseProcessError(f"the parse process of {self.name} is gone ({state})")

    def close(self) -> None:
        """Stop the child (its pipe closes; it exits) and wait for it. Replies to batches already sent
        are read first (the child answers each one), so no thread is left reading a closed pipe."""
        self._sender.shutdown(wait=True)
        self._receiver.shutdown(wait=True)
        self._conn.close()
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
