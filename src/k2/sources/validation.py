"""Venue-independent checks on parsed wire values, columnar: which rows can be stored exactly.

A venue parser decodes a batch of frames, gathers each field into a column, and asks these helpers
which rows hold values that (a) the canonical schema stores without rounding, wrapping or overflow
and (b) a venue can really send. The parser quarantines the other rows with a reason; nothing here
raises on bad data. Every check is one numpy or Arrow kernel over the column, so validation stays
cheap on the hot path; the only per-row Python is the fallback for integers beyond 64 bits, which
only a hostile frame carries.

* Integers: JSON decoders such as msgspec return integers of any size, so a column is first fitted
  into int64 (:func:`int64_column`), then range-checked (ids: :func:`valid_ids`).
* Times: :class:`TimeWindow` bounds a venue time by an absolute floor (the venue's launch), the
  frame's receive time plus a tolerance, and, for live data, a maximum age (:func:`within_window`;
  every venue's two windows: :func:`time_windows`).
* Decimals: :func:`exact_decimal_mask` accepts only plain ASCII decimal text that fits
  ``decimal(precision, scale)`` exactly; :func:`to_decimal` then casts with no possible failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from k2.config import ValidationSettings

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# 9999-12-31T23:59:59.999999Z: the last instant a timestamp column (and Python's datetime) can hold.
MAX_TIMESTAMP_US = 253_402_300_799_999_999

Mask = npt.NDArray[np.bool_]
Int64s = npt.NDArray[np.int64]


def int64_column(values: Sequence[int]) -> tuple[Int64s, Mask]:
    """``values`` as an int64 array, and the mask of rows whose value fits int64 (the others hold 0).

    The common case is one ``np.fromiter``; only a batch holding an integer beyond 64 bits pays for
    the per-row fallback.
    """
    n = len(values)
    try:
        return np.fromiter(values, np.int64, n), np.ones(n, np.bool_)
    except OverflowError:
        fits = np.fromiter((INT64_MIN <= v <= INT64_MAX for v in values), np.bool_, n)
        return np.fromiter((v if ok else 0 for v, ok in zip(values, fits, strict=True)), np.int64, n), fits


def valid_ids(values: Int64s, fits: Mask, *, first: int) -> Mask:
    """Rows holding an id a venue can send: within int64 and at least ``first``, the venue's first id."""
    return fits & (values >= first)


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """The venue times a frame may carry, relative to its receive time (all in UTC microseconds).

    ``earliest_us``: nothing before the venue existed. ``max_future_us``: at most this far after the
    receive time (clock skew). ``max_age_us``: at most this far before it; ``None`` for data that is
    old by design (a replayed recording, a REST backfill page).
    """

    earliest_us: int
    max_future_us: int
    max_age_us: int | None = None


def time_windows(earliest_us: int, validation: ValidationSettings) -> tuple[TimeWindow, TimeWindow]:
    """(live, history) windows of a venue that opened at ``earliest_us``: live frames must be recent
    (``validation.max_age_s``), history (replayed recordings, REST pages, snapshots) is old by design."""
    future_us = int(validation.max_future_s * 1e6)
    max_age = None if validation.max_age_s is None else int(validation.max_age_s * 1e6)
    return TimeWindow(earliest_us, future_us, max_age), TimeWindow(earliest_us, future_us)


def within_window(times: Int64s, fits: Mask, received_us: Int64s, window: TimeWindow, unit_us: int = 1) -> Mask:
    """Rows whose time (int64, in units of ``unit_us`` microseconds) lies inside ``window``.

    Bounds are converted to the times' unit, rounded inwards, instead of the times to microseconds,
    so no multiplication can overflow; the result is also capped at :data:`MAX_TIMESTAMP_US`, so an
    accepted time always converts to a timestamp, whatever the receive time.
    """
    received = np.clip(received_us, 0, MAX_TIMESTAMP_US)  # a receive time is ours (the clock); clip anyway
    latest = np.minimum(received + window.max_future_us, MAX_TIMESTAMP_US)
    ok = fits & (times >= -(-window.earliest_us // unit_us)) & (times <= latest // unit_us)
    if window.max_age_us is not None:
        oldest = received - window.max_age_us
        ok &= times >= -(-oldest // unit_us)
    return ok


@cache
def decimal_pattern(precision: int, scale: int) -> str:
    """The text ``decimal(precision, scale)`` accepts: an optional ``-``, 1 to ``precision - scale``
    ASCII digits, and optionally ``.`` with 1 to ``scale`` ASCII digits. No spaces, ``+``, exponent,
    underscores, other digit scripts, ``NaN`` or ``Infinity``. (Arrow's RE2 ``$`` is end of text.)"""
    return rf"^-?[0-9]{{1,{precision - scale}}}(\.[0-9]{{1,{scale}}})?$"


def exact_decimal_mask(texts: pa.Array, precision: int, scale: int) -> Mask:
    """Rows of a string column that :func:`to_decimal` converts exactly, without rounding.

    Leading zeros count towards the integer digits and trailing zeros towards the decimals: the rule
    is on the text, which is stricter than on the value, and simple to state.
    """
    matched = pc.match_substring_regex(texts, decimal_pattern(precision, scale))
    return np.asarray(matched.fill_null(False).to_numpy(zero_copy_only=False), np.bool_)


def to_decimal(texts: pa.Array, valid: Mask, type_: pa.Decimal128Type) -> pa.Array:
    """Cast a string column to ``type_``; rows not ``valid`` (see :func:`exact_decimal_mask`) become 0.

    Valid text has at most ``precision`` digits and ``scale`` decimals, so Arrow's cast is exact and
    cannot overflow (unchecked text can: 38 integer digits wrap silently in pyarrow's cast).
    """
    if not valid.all():
        texts = pc.if_else(pa.array(valid), texts, pa.scalar("0", pa.string()))
    return texts.cast(type_)
