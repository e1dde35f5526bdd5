"""What the emulator sends: recorded frames decoded for routing, with faults injected on request.

:func:`replay_frames` turns a recording into :class:`OutFrame` items (the frame in both the
combined-stream and the raw form, plus its stream name) and applies :class:`Faults`: duplicates,
swapped neighbours and bad frames built from the real frame they follow. Disconnects are applied by
the server, which knows when a frame has been sent. Everything here is pure: no sockets, no clock.

Each bad-frame kind is named after the :class:`k2.sources.base.RejectReason` the Binance parser must
give it, so tests can compare what was injected with what was quarantined.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import msgspec

from k2.emulator.recording import RecordedFrame
from k2.errors import ConfigError

FRAME = "frame"
DUPLICATE = "duplicate"
REORDER = "reorder"
DISCONNECT = "disconnect"
WITHHELD = "withheld"

MALFORMED_KINDS: tuple[str, ...] = (
    "malformed_json",
    "missing_field",
    "wrong_type",
    "invalid_number",
    "non_positive",
    "unknown_event",
)
"""Bad-frame kinds in the order they are cycled through; each equals the parser's reject reason."""

INJECTED_KINDS: tuple[str, ...] = (DUPLICATE, REORDER, DISCONNECT, WITHHELD, *MALFORMED_KINDS)

REST_BAD_BODY = "bad_body"
REST_EMPTY_PAGE = "empty_page"
REST_SLOW = "slow"
REST_FAULT_KINDS: tuple[str, ...] = (REST_BAD_BODY, REST_EMPTY_PAGE, REST_SLOW)
"""REST faults besides HTTP errors (see :attr:`Faults.rest_errors`)."""


@dataclass(frozen=True, slots=True)
class Faults:
    """Faults to inject. ``0``/empty disables each one; counts are 1-based positions in the replay.

    * ``disconnect_after``: drop every open connection right after the n-th recorded frame has been
      sent (cumulative over the replay, so ``(100, 250)`` drops twice).
    * ``disconnect_code``: ``None`` drops the TCP connection without a WebSocket close frame (the
      client sees 1006, like a network failure); a code such as 1011 closes with that code instead.
    * ``duplicate_every``: send every k-th recorded frame twice.
    * ``reorder_every``: swap the k-th recorded frame with the one after it (k, 2k, ...).
    * ``malformed_every``: after every k-th recorded frame, insert a bad frame built from it, cycling
      through :data:`MALFORMED_KINDS`.
    * ``withhold``: ``(start, count)`` ranges of recorded frames (1-based positions) never sent on the
      WebSocket; the REST endpoints still serve their trades (a gap that backfill can close).
    * ``rest_errors``: answers given, in order, to the first ``historicalTrades`` requests instead
      of the right one: ``(status, retry_after_s)`` for an HTTP error (e.g. ``((429, 1.0), (503,
      0.5))``), or one of :data:`REST_FAULT_KINDS` with a number: ``("bad_body", 0)`` a 200 whose
      JSON is cut in half, ``("empty_page", 0)`` a 200 with ``[]``, ``("slow", s)`` the right answer
      after ``s`` seconds (a client timeout).
    """

    disconnect_after: tuple[int, ...] = ()
    disconnect_code: int | None = None
    duplicate_every: int = 0
    reorder_every: int = 0
    malformed_every: int = 0
    withhold: tuple[tuple[int, int], ...] = ()
    rest_errors: tuple[tuple[int | str, float], ...] = ()

    def __post_init__(self) -> None:
        for name in ("duplicate_every", "reorder_every", "malformed_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0")
        if any(n <= 0 for n in self.disconnect_after):
            raise ConfigError("disconnect_after positions must be positive")
        object.__setattr__(self, "disconnect_after", tuple(sorted(set(self.disconnect_after))))
        if any(start <= 0 or count <= 0 for start, count in self.withhold):
            raise ConfigError("withhold ranges must be (start >= 1, count >= 1)")
        for status, value in self.rest_errors:
            known = status in REST_FAULT_KINDS if isinstance(status, str) else 400 <= status <= 599
            if not known or value < 0:
                raise ConfigError(f"rest_errors must be (HTTP status 4xx/5xx or one of {REST_FAULT_KINDS}, >= 0)")

    def withheld(self, position: int) -> bool:
        """True when recorded frame ``position`` (1-based) is withheld from the WebSocket."""
        return any(start <= position < start + count for start, count in self.withhold)

    @property
    def any(self) -> bool:
        return bool(
            self.disconnect_after
            or self.duplicate_every
            or self.reorder_every
            or self.malformed_every
            or self.withhold
            or self.rest_errors
        )


@dataclass(frozen=True, slots=True)
class OutFrame:
    """One frame to send: ``combined`` for ``/stream`` clients, ``raw`` for ``/ws`` clients."""

    stream: str | None  # None: not routable (a recorded control reply); skipped
    combined: bytes
    raw: bytes
    recv_us: int
    kind: str = FRAME  # FRAME, DUPLICATE or one of MALFORMED_KINDS


class _Envelope(msgspec.Struct):
    stream: str | None = None
    data: msgspec.Raw = msgspec.Raw(b"")
    e: Any = None
    s: Any = None


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_encoder = msgspec.json.Encoder()


def _wrap(stream: str, raw: bytes) -> bytes:
    return b'{"stream":"' + stream.encode() + b'","data":' + raw + b"}"


def decode_frame(recorded: RecordedFrame) -> OutFrame:
    """Route a recorded frame: combined envelopes keep their bytes, and ``data`` is sliced out verbatim.

    A raw event (no envelope) is routed to ``<symbol lower-case>@<event type>`` and wrapped for
    combined clients; anything else (a recorded subscription reply, garbage) gets ``stream=None``.
    """
    text = recorded.frame.encode()
    try:
        env = _envelope_decoder.decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return OutFrame(None, text, text, recorded.recv_us)
    if env.stream is not None and len(env.data):
        return OutFrame(env.stream, text, bytes(env.data), recorded.recv_us)
    if isinstance(env.e, str) and isinstance(env.s, str):
        stream = f"{env.s.lower()}@{env.e}"
        return OutFrame(stream, _wrap(stream, text), text, recorded.recv_us)
    return OutFrame(None, text, text, recorded.recv_us)


def bad_frame(source: OutFrame, kind: str) -> OutFrame:
    """A frame of ``kind`` (one of :data:`MALFORMED_KINDS`) built from a real frame's data."""
    assert source.stream is not None
    if kind == "malformed_json":  # cut in half: no longer valid JSON in either form
        return OutFrame(
            source.stream, source.combined[: len(source.combined) // 2], source.raw[: len(source.raw) // 2],
            source.recv_us, kind,
        )  # fmt: skip
    data: dict[str, Any] = msgspec.json.decode(source.raw)
    if kind == "missing_field":
        data.pop("p", None)
    elif kind == "wrong_type":
        data["t"] = str(data.get("t"))
    elif kind == "invalid_number":
        data["p"] = "not-a-number"
    elif kind == "non_positive":
        data["p"] = "-" + str(data.get("p"))
    elif kind == "unknown_event":
        data["e"] = "unknownEvent"
    else:
        raise ValueError(f"unknown malformed kind {kind!r}")
    raw = _encoder.encode(data)
    return OutFrame(source.stream, _wrap(source.stream, raw), raw, source.recv_us, kind)


def _count(injected: MutableMapping[str, int], kind: str) -> None:
    injected[kind] = injected.get(kind, 0) + 1


def _reordered(frames: Iterator[OutFrame], every: int, injected: MutableMapping[str, int]) -> Iterator[OutFrame]:
    """Swap recorded frame k with k+1 for k = every, 2*every, ... (positions in the original order)."""
    position = 0
    for frame in frames:
        position += 1
        if position % every:
            yield frame
            continue
        following = next(frames, None)
        if following is None:
            yield frame
            return
        position += 1
        _count(injected, REORDER)
        yield following
        yield frame


def _withheld(frames: Iterator[OutFrame], faults: Faults, injected: MutableMapping[str, int]) -> Iterator[OutFrame]:
    """Leave out the recorded frames in ``faults.withhold`` (positions in the original order)."""
    for position, frame in enumerate(frames, 1):
        if faults.withheld(position):
            _count(injected, WITHHELD)
            continue
        yield frame


def routable_frames(recording: Iterable[RecordedFrame]) -> Iterator[OutFrame]:
    """The recording's frames decoded for routing; frames with no stream are left out."""
    return (f for f in map(decode_frame, recording) if f.stream is not None)


def apply_faults(frames: Iterable[OutFrame], faults: Faults, injected: MutableMapping[str, int]) -> Iterator[OutFrame]:
    """``frames`` with faults applied; ``injected`` is updated lazily, as frames are taken.

    Positions count recorded frames in recording order; duplicates and bad frames follow the
    recorded frame they were made from.
    """
    source: Iterator[OutFrame] = iter(frames)
    if faults.withhold:
        source = _withheld(source, faults, injected)
    if faults.reorder_every:
        source = _reordered(source, faults.reorder_every, injected)
    dup, bad = faults.duplicate_every, faults.malformed_every
    if not dup and not bad:
        yield from source
        return
    for position, frame in enumerate(source, 1):
        yield frame
        if dup and position % dup == 0:
            _count(injected, DUPLICATE)
            yield OutFrame(frame.stream, frame.combined, frame.raw, frame.recv_us, DUPLICATE)
        if bad and position % bad == 0:
            kind = MALFORMED_KINDS[(position // bad - 1) % len(MALFORMED_KINDS)]
            _count(injected, kind)
            yield bad_frame(frame, kind)


def replay_frames(
    recording: Iterable[RecordedFrame], faults: Faults, injected: MutableMapping[str, int]
) -> Iterator[OutFrame]:
    """The frames to send for one pass over a recording: routable frames, faults applied."""
    return apply_faults(routable_frames(recording), faults, injected)
