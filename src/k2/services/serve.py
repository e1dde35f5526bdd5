"""`k2 serve` and `k2 run --serve`: the REST API and dashboard under uvicorn.

``serve`` runs the service in the calling thread until SIGINT/SIGTERM. :class:`ApiServer` runs it in a
daemon thread with its own event loop, which is how `k2 run --serve` shares a process with the
embedded pipeline: the pipeline's loop never waits for an HTTP request, and queries run in the
service's worker threads (k2.api.workers), so the only thing the two share is the GIL.

The listening socket is bound before uvicorn starts, so ``port=0`` works (tests, benchmarks) and the
real address is known at once (:attr:`ApiServer.url`).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable

import uvicorn

from k2.config import K2Settings
from k2.errors import ConfigError
from k2.logging import get_logger

log = get_logger(__name__)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _server(settings: K2Settings, process_metrics: bool) -> uvicorn.Server:
    from k2.api.app import create_app

    app = create_app(settings, process_metrics=process_metrics)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(settings: K2Settings, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn's handlers). ``on_ready(url)`` is called once the socket
    listens (connections made before the app has started wait in the socket's backlog)."""
    sock = _bind(settings.api.host, settings.api.port)
    try:
        server = _server(settings, process_metrics=False)
        url = _url(sock)
        log.info("api.listening", url=url)
        if on_ready is not None:
            on_ready(url)
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()


class ApiServer:
    """The service in a daemon thread (its own event loop), for `k2 run --serve` and tests."""

    def __init__(self, settings: K2Settings, *, process_metrics: bool = False) -> None:
        self._sock = _bind(settings.api.host, settings.api.port)
        try:
            self._server = _server(settings, process_metrics)
        except BaseException:
            self._sock.close()
            raise
        self.url = _url(self._sock)
        self._thread = threading.Thread(target=self._main, name="k2-api", daemon=True)
        self._error: BaseException | None = None

    def _main(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # reported by start()/stop()
            self._error = exc

    def start(self, timeout_s: float = 30.0) -> str:
        self._thread.start()
        waited = 0.0
        while not self._server.started:
            if not self._thread.is_alive() or waited >= timeout_s:
                self.stop()
                raise ConfigError(f"the API server did not start: {self._error or 'timed out'}")
            self._thread.join(0.05)
            waited += 0.05
        log.info("api.listening", url=self.url)
        return self.url

    def stop(self, timeout_s: float = 15.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._sock.close()

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
