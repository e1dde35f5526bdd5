"""What the emulator sends: recorded frames decoded for routing, with faults injected on request.

:func:`replay_frames` turns a recording into :class:`OutFrame` items (the frame in both the
combined-stream and the raw form, plus its stream name) and applies :class:`Faults`: duplicates,
swapped neighbours and bad frames built from the real frame they follow. Disconnects are applied by
the server, which knows when a frame has been sent. Everything here is pure: no sockets, no clock.

Which frames carry trades or quotes, and how a bad frame is made from a real one, is the venue's:
:class:`BadFrames`, part of every emulator protocol (:data:`BINANCE_FRAMES` is Binance's, the
default here). Every bad-frame kind maps to the :class:`k2.sources.base.RejectReason` the venue's
parser must give it (:func:`expected_reasons`), so tests can compare what was injected with what was
quarantined. The six :data:`MALFORMED_KINDS` are named after their reason and shared by all venues;
the adversarial kinds are values a hostile or broken venue could send that once crashed K2 or were
stored as good (issue 9): Binance's :data:`ADVERSARIAL_KINDS` (Coinbase makes the same kinds in its
own form), or a venue's own (Kraken's)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from k2.emulator.recording import RecordedFrame
from k2.errors import ConfigError
from k2.schema.kinds import RecordKind
from k2.sources.base import RejectReason

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
"""Bad-frame kinds ``malformed_every`` cycles through, in order; each equals the parser's reject reason."""

_TWO_63 = 2**63
_CENTURIES_MS = 300 * 365 * 86_400_000  # "centuries ahead": 300 years, in Binance's milliseconds
_YEAR_10000_MS = 253_402_300_800_000  # 10000-01-01T00:00:00Z: past what a datetime can hold

ADVERSARIAL_KINDS: dict[str, RejectReason] = {
    "data_not_object": RejectReason.WRONG_TYPE,  # `data` is a list holding the trade object
    "event_not_string": RejectReason.WRONG_TYPE,  # `e` = ["trade"]
    "price_space": RejectReason.INVALID_NUMBER,  # " " + p
    "price_underscore": RejectReason.INVALID_NUMBER,  # an underscore after the first digit
    "price_non_ascii_digits": RejectReason.INVALID_NUMBER,  # p's digits in Arabic-Indic script
    "price_50_digits": RejectReason.INVALID_NUMBER,  # p's integer digits repeated to 50 digits, same decimals
    "price_38_digits": RejectReason.INVALID_NUMBER,  # p = 38 ones (pyarrow's cast once wrapped it silently)
    "trade_id_2_63": RejectReason.OUT_OF_RANGE,  # t = 2^63
    "trade_time_2_63": RejectReason.OUT_OF_RANGE,  # T = 2^63
    "trade_time_int64_max": RejectReason.OUT_OF_RANGE,  # T = 2^63 - 1 (wraps to 1969 as µs)
    "trade_time_zero": RejectReason.OUT_OF_RANGE,  # T = 0
    "trade_time_negative": RejectReason.OUT_OF_RANGE,  # T = -T
    "trade_time_far_future": RejectReason.OUT_OF_RANGE,  # T + 300 years
    "trade_time_after_9999": RejectReason.OUT_OF_RANGE,  # T in year 10000
    "trade_id_negative": RejectReason.OUT_OF_RANGE,  # t = -t
    "unsubscribed_stream": RejectReason.UNSUBSCRIBED,  # stream and `s` of a foreign symbol
    "stream_symbol_mismatch": RejectReason.UNSUBSCRIBED,  # `s` of a foreign symbol on the real stream
}
"""Adversarial kinds ``adversarial_every`` cycles through, in order, with the reason the parser must give."""

CROSSED_QUOTE = "crossed_quote"  # a quote with its bid and ask swapped: bid > ask

EXPECTED_REASON: dict[str, RejectReason] = {
    **{kind: RejectReason(kind) for kind in MALFORMED_KINDS},
    **ADVERSARIAL_KINDS,
    CROSSED_QUOTE: RejectReason.CROSSED_BOOK,
}
"""Every bad-frame kind of a venue whose adversarial kinds are :data:`ADVERSARIAL_KINDS` (Binance, Coinbase) and
the reason its parser must quarantine it with: ``expected_reasons(BINANCE_FRAMES)``."""

FOREIGN_PREFIX = "XK2"
"""Prefix making the symbol of an ``unsubscribed_stream`` / ``stream_symbol_mismatch`` frame foreign
(``XK2BTCUSDT``): no K2 subscription names it, so the frame tests the subscription check."""

INJECTED_KINDS: tuple[str, ...] = (DUPLICATE, REORDER, DISCONNECT, WITHHELD, *EXPECTED_REASON)

REST_BAD_BODY = "bad_body"
REST_EMPTY_PAGE = "empty_page"
REST_SLOW = "slow"
REST_FAULT_KINDS: tuple[str, ...] = (REST_BAD_BODY, REST_EMPTY_PAGE, REST_SLOW)
"""REST faults besides HTTP errors (see :attr:`Faults.rest_errors`)."""


@dataclass(frozen=True, slots=True)
class Faults:
    """Faults to inject. ``0``/empty disables each one; counts are 1-based positions in the replay.

    * ``disconnect_after``: drop every open connection right after the n-th recorded frame has been
      sent (cumulative over the replay, so ``(100, 250)`` drops twice). In a live replay the n-th
      recorded frame of the feed, sent or missed: the drop comes at the same moment of the feed
      however long a client was away before it.
    * ``disconnect_code``: ``None`` drops the TCP connection without a WebSocket close frame (the
      client sees 1006, like a network failure); a code such as 1011 closes with that code instead.
    * ``duplicate_every``: send every k-th recorded frame twice.
    * ``reorder_every``: swap the k-th recorded frame with the one after it (k, 2k, ...).
    * ``malformed_every``: after every k-th recorded *trade* frame, insert a bad frame built from it,
      cycling through :data:`MALFORMED_KINDS` (trades only: the kinds mutate trade fields).
    * ``adversarial_every``: the same with the venue's ``BadFrames.adversarial_kinds`` (Binance's
      :data:`ADVERSARIAL_KINDS`), after the malformed one when both fall on a frame. Each is sent on
      the connection subscribed to the real frame's stream, even when its content names a foreign
      stream or symbol.
    * ``crossed_every``: after every k-th recorded quote frame, insert a copy with its bid and
      ask swapped (a crossed book, :data:`CROSSED_QUOTE`).
    * ``withhold``: ``(start, count)`` ranges of recorded frames (1-based positions) never sent on the
      WebSocket; the REST endpoints still serve their trades (a gap that backfill can close).
    * ``rest_errors``: answers given, in order, to the first trade-page requests instead
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
    adversarial_every: int = 0
    crossed_every: int = 0
    withhold: tuple[tuple[int, int], ...] = ()
    rest_errors: tuple[tuple[int | str, float], ...] = ()

    def __post_init__(self) -> None:
        for name in ("duplicate_every", "reorder_every", "malformed_every", "adversarial_every", "crossed_every"):
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
            or self.adversarial_every
            or self.crossed_every
            or self.withhold
            or self.rest_errors
        )


@dataclass(frozen=True, slots=True)
class OutFrame:
    """One frame to send: ``combined`` for ``/stream`` clients, ``raw`` for ``/ws`` clients."""

    stream: str | None  # where it is routed (None: not routable, a recorded control reply; skipped)
    combined: bytes
    raw: bytes
    recv_us: int
    kind: str = FRAME  # FRAME, DUPLICATE or a key of EXPECTED_REASON


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


class BadFrames(Protocol):
    """A venue's part of fault injection: which recorded frames carry trades or quotes, and how a bad
    frame of each kind is built from a real one (its reason: :func:`expected_reasons`)."""

    adversarial_kinds: Mapping[str, RejectReason]  # the kinds ``adversarial_every`` cycles through, in order

    def record_kind(self, out: OutFrame) -> RecordKind | None:
        """The kind of record a routed frame carries (trades get malformed and adversarial frames
        after them, quotes crossed ones); None for anything else."""
        ...

    def bad_frame(self, source: OutFrame, kind: str) -> OutFrame:
        """A frame of ``kind`` built from ``source``, routed like it."""
        ...


class BinanceBadFrames:
    """Binance's :class:`BadFrames`: ``@trade`` and ``@bookTicker`` streams, :func:`bad_frame`."""

    adversarial_kinds: Mapping[str, RejectReason] = ADVERSARIAL_KINDS

    def record_kind(self, out: OutFrame) -> RecordKind | None:
        stream = out.stream or ""
        if stream.endswith("@trade"):
            return RecordKind.TRADES
        return RecordKind.QUOTES if stream.endswith("@bookTicker") else None

    def bad_frame(self, source: OutFrame, kind: str) -> OutFrame:
        return bad_frame(source, kind)


BINANCE_FRAMES = BinanceBadFrames()


def expected_reasons(venue: BadFrames) -> dict[str, RejectReason]:
    """Every bad-frame kind ``venue`` makes and the reason its parser must quarantine it with."""
    return {
        **{kind: RejectReason(kind) for kind in MALFORMED_KINDS},
        **venue.adversarial_kinds,
        CROSSED_QUOTE: RejectReason.CROSSED_BOOK,
    }


def bad_frame(source: OutFrame, kind: str) -> OutFrame:
    """A frame of ``kind`` (a key of :data:`EXPECTED_REASON`) built from a real frame's data.

    It is routed like ``source`` (same ``stream``), whatever stream or symbol its content names.
    """
    assert source.stream is not None
    if kind == CROSSED_QUOTE:
        quote: dict[str, Any] = msgspec.json.decode(source.raw)
        quote["b"], quote["a"] = quote.get("a"), quote.get("b")
        raw = _encoder.encode(quote)
        return OutFrame(source.stream, _wrap(source.stream, raw), raw, source.recv_us, kind)
    if kind == "malformed_json":  # cut in half: no longer valid JSON in either form
        return OutFrame(
            source.stream, source.combined[: len(source.combined) // 2], source.raw[: len(source.raw) // 2],
            source.recv_us, kind,
        )  # fmt: skip
    data: dict[str, Any] = msgspec.json.decode(source.raw)
    stream = source.stream  # the stream name written into the combined form
    if kind == "data_not_object":
        raw = _encoder.encode([data])
        return OutFrame(source.stream, _wrap(stream, raw), raw, source.recv_us, kind)
    if kind in ("unsubscribed_stream", "stream_symbol_mismatch"):
        data["s"] = FOREIGN_PREFIX + str(data.get("s"))
        if kind == "unsubscribed_stream":
            stream = FOREIGN_PREFIX.lower() + stream
    else:
        _mutate(data, kind)
    raw = _encoder.encode(data)
    return OutFrame(source.stream, _wrap(stream, raw), raw, source.recv_us, kind)


def _digits(whole: str, n: int) -> str:
    """``whole``'s digits repeated to ``n`` significant digits (``"61837"`` -> ``"6183761837..."``)."""
    digits = whole.lstrip("-0") or "1"
    return (digits * (n // len(digits) + 1))[:n]


_ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


def _mutate(data: dict[str, Any], kind: str) -> None:
    """Change one field of a trade's ``data`` in place, as ``kind`` says."""
    price = str(data.get("p"))
    whole, _, fraction = price.partition(".")
    trade_time = int(data.get("T", 0))
    changes: dict[str, dict[str, Any]] = {
        "missing_field": {},
        "wrong_type": {"t": str(data.get("t"))},
        "invalid_number": {"p": "not-a-number"},
        "non_positive": {"p": "-" + price},
        "unknown_event": {"e": "unknownEvent"},
        "event_not_string": {"e": [data.get("e")]},
        "price_space": {"p": " " + price},
        "price_underscore": {"p": price[:1] + "_" + price[1:]},
        "price_non_ascii_digits": {"p": price.translate(_ARABIC_INDIC)},
        "price_50_digits": {"p": _digits(whole, 50) + "." + fraction if fraction else _digits(whole, 50)},
        "price_38_digits": {"p": "1" * 38},
        "trade_id_2_63": {"t": _TWO_63},
        "trade_time_2_63": {"T": _TWO_63},
        "trade_time_int64_max": {"T": _TWO_63 - 1},
        "trade_time_zero": {"T": 0},
        "trade_time_negative": {"T": -trade_time},
        "trade_time_far_future": {"T": trade_time + _CENTURIES_MS},
        "trade_time_after_9999": {"T": _YEAR_10000_MS + trade_time},
        "trade_id_negative": {"t": -int(data.get("t", 0))},
    }
    if kind not in changes:
        raise ValueError(f"unknown bad-frame kind {kind!r}")
    if kind == "missing_field":
        data.pop("p", None)
    data.update(changes[kind])


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


def routable_frames(
    recording: Iterable[RecordedFrame], route: Callable[[RecordedFrame], OutFrame] = decode_frame
) -> Iterator[OutFrame]:
    """The recording's frames routed (by the venue protocol's ``route``); frames with no stream are left out."""
    return (f for f in map(route, recording) if f.stream is not None)


def apply_faults(
    frames: Iterable[OutFrame],
    faults: Faults,
    injected: MutableMapping[str, int],
    venue: BadFrames = BINANCE_FRAMES,
) -> Iterator[OutFrame]:
    """``frames`` with faults applied; ``injected`` is updated lazily, as frames are taken.

    Positions count recorded frames in recording order; duplicates and bad frames follow the
    recorded frame they were made from (by ``venue``, the emulator protocol's :class:`BadFrames`).
    """
    source: Iterator[OutFrame] = iter(frames)
    if faults.withhold:
        source = _withheld(source, faults, injected)
    if faults.reorder_every:
        source = _reordered(source, faults.reorder_every, injected)
    dup, bad, hostile, crossed = (
        faults.duplicate_every, faults.malformed_every, faults.adversarial_every, faults.crossed_every
    )  # fmt: skip
    if not dup and not bad and not hostile and not crossed:
        yield from source
        return
    adversarial = tuple(venue.adversarial_kinds)
    trades = quotes = 0  # positions among the trade frames and among the quote frames
    for position, frame in enumerate(source, 1):
        yield frame
        if dup and position % dup == 0:
            _count(injected, DUPLICATE)
            yield OutFrame(frame.stream, frame.combined, frame.raw, frame.recv_us, DUPLICATE)
        kind_of = venue.record_kind(frame)
        if kind_of is RecordKind.TRADES:
            trades += 1
            for every, kinds in ((bad, MALFORMED_KINDS), (hostile, adversarial)):
                if every and trades % every == 0:
                    kind = kinds[(trades // every - 1) % len(kinds)]
                    _count(injected, kind)
                    yield venue.bad_frame(frame, kind)
        elif kind_of is RecordKind.QUOTES:
            quotes += 1
            if crossed and quotes % crossed == 0:
                _count(injected, CROSSED_QUOTE)
                yield venue.bad_frame(frame, CROSSED_QUOTE)


def replay_frames(
    recording: Iterable[RecordedFrame],
    faults: Faults,
    injected: MutableMapping[str, int],
    route: Callable[[RecordedFrame], OutFrame] = decode_frame,
    venue: BadFrames = BINANCE_FRAMES,
) -> Iterator[OutFrame]:
    """The frames to send for one pass over a recording: routable frames (by ``route``), faults applied
    (bad frames by ``venue``); Binance's by default."""
    return apply_faults(routable_frames(recording, route), faults, injected, venue)
