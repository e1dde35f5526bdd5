"""Recordings: gzip-compressed JSON lines of raw frames with their receive times.

One line per frame::

    {"recv_us": 1723161255343000, "frame": "{\\"stream\\":\\"btcusdt@trade\\",\\"data\\":{...}}"}

``recv_us`` is the UTC receive time in microseconds; ``frame`` is the frame's text, byte for byte as
the venue sent it. ``k2 capture`` writes this format; the emulator replays it. For convenience the
reader also accepts plain lines holding a raw frame (as published in public sample sets); their
receive time is taken from the frame's exchange event time (``E``/``data.E``) when present.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

import msgspec

from k2.errors import RecordingError

BUNDLED_DIR = Path(__file__).parent / "recordings"
BUNDLED_BINANCE_TRADES = BUNDLED_DIR / "binance_btcusdt_ethusdt_trades_2024-08-08T2354_0005.jsonl.gz"
"""34,419 real Binance spot trades (BTCUSDT + ETHUSDT), see ``recordings/README.md``."""
BUNDLED_BINANCE_SESSION = BUNDLED_DIR / "binance_btcusdt_ethusdt_session_2024-08-08T2354_0005.jsonl.gz"
"""The whole recorded Binance session of BTCUSDT + ETHUSDT: trades, bookTicker, depth diffs, with their real
interleaving and receive times (179,316 frames), see ``recordings/README.md``."""
BUNDLED_COINBASE_SESSION = BUNDLED_DIR / "coinbase_exchange_10_products_session_2021-04-17T1643.jsonl.gz"
"""A whole recorded Coinbase Exchange session of 10 products (matches, ticker, level2; 9,946 messages with
the recorder's receive times), see ``recordings/README.md``."""


@dataclass(frozen=True, slots=True)
class RecordedFrame:
    recv_us: int
    frame: str


class _Line(msgspec.Struct):
    recv_us: int
    frame: str


class _Event(msgspec.Struct):
    E: int | None = None
    data: _Event | None = None


_line_decoder = msgspec.json.Decoder(_Line)
_event_decoder = msgspec.json.Decoder(_Event)
_line_encoder = msgspec.json.Encoder()


def _open_text(path: Path, mode: str) -> IO[str]:
    if path.suffix == ".gz":
        return cast(IO[str], gzip.open(path, mode + "t", encoding="utf-8"))
    return open(path, mode, encoding="utf-8")


def _plain_frame(text: str) -> RecordedFrame:
    try:
        event = _event_decoder.decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return RecordedFrame(0, text)
    event_ms = event.E if event.E is not None else (event.data.E if event.data else None)
    return RecordedFrame((event_ms or 0) * 1000, text)


def read_recording(path: Path) -> Iterator[RecordedFrame]:
    """Yield the frames of a recording in file order."""
    if not path.exists():
        raise RecordingError(f"recording not found: {path}")
    try:
        with _open_text(path, "r") as fh:
            for lineno, raw in enumerate(fh, 1):
                line = raw.rstrip("\n")
                if not line:
                    continue
                if line.startswith('{"recv_us"'):
                    try:
                        rec = _line_decoder.decode(line)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        raise RecordingError(f"{path}:{lineno}: not a recording line: {exc}") from exc
                    yield RecordedFrame(rec.recv_us, rec.frame)
                else:
                    yield _plain_frame(line)
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise RecordingError(f"cannot read recording {path}: {exc}") from exc


class RecordingWriter:
    """Appends frames to a (gzip) JSON-lines recording. Use as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.frames = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = _open_text(path, "w")
        except OSError as exc:
            raise RecordingError(f"cannot write recording {path}: {exc}") from exc

    def write(self, frame: str, recv_us: int) -> None:
        self._fh.write(_line_encoder.encode(_Line(recv_us, frame)).decode())
        self._fh.write("\n")
        self.frames += 1

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
