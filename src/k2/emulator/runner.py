"""Run the emulator in a child process (its own interpreter and GIL), for load tests and benchmarks.

``with EmulatorProcess(config) as emu:`` starts ``python -m k2.emulator.runner``, hands it the
config over stdin and reads the URL it prints; closing stdin stops it. Counters stay in the child:
use :class:`k2.emulator.server.EmulatorThread` when a test needs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import subprocess
import sys

from k2.emulator.server import BinanceEmulator, ReplayConfig
from k2.logging import configure_logging

_URL_PREFIX = "K2_EMULATOR_URL "


class EmulatorProcess:
    """A :class:`BinanceEmulator` serving from a child process until :meth:`stop`."""

    def __init__(
        self,
        config: ReplayConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "WARNING",
    ) -> None:
        self.config = config or ReplayConfig()
        self.host = host
        self.port = port
        self.log_level = log_level
        self.url = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        """Start the child; returns the emulator's base URL once it listens."""
        proc = self._proc = subprocess.Popen(
            [sys.executable, "-m", "k2.emulator.runner"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        pickle.dump((self.config, self.host, self.port, self.log_level), proc.stdin)
        proc.stdin.flush()
        for raw in proc.stdout:  # until the child announces its URL (or exits)
            line = raw.decode(errors="replace").strip()
            if line.startswith(_URL_PREFIX):
                self.url = line.removeprefix(_URL_PREFIX)
                return self.url
        self.stop()
        raise RuntimeError("emulator process exited before listening")

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout_s)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> EmulatorProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _child_main() -> None:
    config, host, port, log_level = pickle.load(sys.stdin.buffer)  # noqa: S301 - sent by our parent process
    configure_logging(level=log_level)

    async def serve() -> None:
        async with BinanceEmulator(config, host, port) as emu:
            print(_URL_PREFIX + emu.url, flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)  # EOF: stop

    asyncio.run(serve())


if __name__ == "__main__":
    _child_main()
