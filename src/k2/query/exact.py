"""Exact decimal arithmetic for notional, volume and VWAP. No floating point anywhere.

Prices and quantities are ``decimal(38, 12)``: an unscaled integer below 10**38 times 10**-12. A
product of two has 24 fractional digits and an unscaled value below 10**76, which neither DuckDB's
``DECIMAL(38, 24)`` nor its 128-bit ``HUGEINT`` can always hold; a sum over many rows can overflow
too. DuckDB raises on overflow (never wraps), but K2 picks a method that cannot overflow, from the
scan plan's column metrics (the largest |price| ``P`` and |quantity| ``Q`` in the planned files):

``chunked`` (when ``P * Q * files < 10**38``)
    ``sum(price * quantity)`` in DuckDB (``DECIMAL(38, 24)``, exact integer arithmetic) over groups
    of at most ``files * chunk_rows`` rows (rows are grouped by ``file_row_number // chunk_rows``),
    where ``chunk_rows = (10**38 - 1) // (max(P, Q, 1) * files)``: no product and no group sum can
    reach 10**38. The partial sums are added in Python integers. For real data there is a single
    chunk per bucket (BTCUSDT: P*Q ~ 3e30, so a chunk holds ~3e7 rows per file).

``limbs`` (otherwise, or when a file has no metrics)
    Each unscaled value ``u`` is split into three 42-bit limbs (``u = l0 + l1*2**42 + l2*2**84``) with
    HUGEINT shifts and masks; the nine limb products (< 2**85 each) are summed per power of 2**42
    in five HUGEINT sums that cannot overflow below ~10**12 rows. Python recombines them.

VWAP is then ``notional / volume`` computed on unscaled Python integers and rounded to 12 decimal
places with ROUND_HALF_EVEN (banker's rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Context, Decimal

import numpy as np
import pyarrow as pa

from k2.errors import QueryError
from k2.schema import PRICE_PRECISION, PRICE_SCALE

DECIMAL_LIMIT = 10**PRICE_PRECISION  # |unscaled| of a DECIMAL(38, s) is below this
LIMB_BITS = 42
LIMB_MASK = (1 << LIMB_BITS) - 1
OUTPUT_TYPE = pa.decimal128(PRICE_PRECISION, PRICE_SCALE)
_EXACT = Context(prec=200)  # far more digits than any value here: no Decimal operation rounds


@dataclass(frozen=True, slots=True)
class NotionalMethod:
    """How notional and volume are summed exactly: chunked decimal sums or limb sums."""

    kind: str  # "chunked" | "limbs"
    chunk_rows: int | None = None  # chunked: rows per file_row_number chunk; None = one chunk per group

    @property
    def needs_row_numbers(self) -> bool:
        return self.kind == "chunked" and self.chunk_rows is not None


LIMBS = NotionalMethod("limbs")


def choose_method(
    max_abs_price: int | None, max_abs_quantity: int | None, files: int, max_file_rows: int
) -> NotionalMethod:
    """The cheapest method that provably cannot overflow for these plan metrics."""
    if max_abs_price is None or max_abs_quantity is None:
        return LIMBS
    files = max(files, 1)
    per_row = max(max_abs_price * max_abs_quantity, max_abs_quantity, 1)
    chunk_rows = (DECIMAL_LIMIT - 1) // (per_row * files)
    if chunk_rows < 1:
        return LIMBS
    if chunk_rows >= max_file_rows:
        return NotionalMethod("chunked", None)  # every file is a single chunk: no row numbers needed
    return NotionalMethod("chunked", chunk_rows)


def combine_limbs(sums: Sequence[int]) -> int:
    """``sum(s_i * 2**(42 i))``: the value whose limb sums are ``sums``."""
    return sum(int(s) << (LIMB_BITS * i) for i, s in enumerate(sums))


def div_round_half_even(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded to an integer, ties to even (exact, integers only)."""
    if denominator == 0:
        raise ZeroDivisionError("division by zero")
    if denominator < 0:
        numerator, denominator = -numerator, -denominator
    quotient, remainder = divmod(numerator, denominator)  # floor division: 0 <= remainder < denominator
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


def vwap_unscaled(notional_u24: int, volume_u12: int) -> int | None:
    """VWAP as an unscaled decimal(38, 12) integer, or None when the volume is zero.

    notional = N * 10**-24 and volume = V * 10**-12, so VWAP = N / V * 10**-12: the unscaled
    VWAP is N / V, rounded half-even.
    """
    if volume_u12 == 0:
        return None
    return div_round_half_even(notional_u24, volume_u12)


def unscaled(value: Decimal, scale: int = PRICE_SCALE) -> int:
    """The exact unscaled integer of ``value`` at ``scale``; refuses values with more digits."""
    scaled = value.scaleb(scale, context=_EXACT)
    if scaled != scaled.to_integral_value(context=_EXACT):
        raise QueryError(f"{value} has more than {scale} decimal places")
    return int(scaled)


def to_decimal(unscaled_value: int, scale: int = PRICE_SCALE) -> Decimal:
    """``unscaled_value * 10**-scale`` as a Decimal, exactly."""
    return Decimal(unscaled_value).scaleb(-scale, context=_EXACT)


def unscaled_ints(array: pa.Array) -> list[int | None]:
    """The unscaled integers of a decimal128 array, read from its buffer (exact, no Decimal)."""
    if not pa.types.is_decimal128(array.type):
        raise TypeError(f"expected decimal128, got {array.type}")
    n = len(array)
    words = np.frombuffer(array.buffers()[1], "<i8", 2 * n, 16 * array.offset)
    lo, hi = words[0::2], words[1::2]
    if bool(np.all(hi == (lo >> 63))):  # every value fits 64 bits: the common case
        values: list[int | None] = list(lo.tolist())
    else:
        values = [(h << 64) | u for h, u in zip(hi.tolist(), lo.view(np.uint64).tolist(), strict=True)]
    if array.null_count:
        values = [v if ok else None for v, ok in zip(values, array.is_valid().to_pylist(), strict=True)]
    return values


def decimal_array(values: Sequence[int | None], what: str) -> pa.Array:
    """A decimal128(38, 12) array from unscaled integers; QueryError when one does not fit."""
    present = [v for v in values if v is not None]
    for value in present:
        if not -DECIMAL_LIMIT < value < DECIMAL_LIMIT:
            raise QueryError(f"{what} {to_decimal(value)} does not fit decimal(38, 12)")
    filled = [0 if v is None else v for v in values]
    if all(-(2**63) <= v < 2**63 for v in filled):
        lo = np.array(filled, np.int64)
        words = np.empty(2 * len(filled), np.int64)
        words[0::2], words[1::2] = lo, lo >> 63
        data = pa.py_buffer(words)
    else:
        data = pa.py_buffer(b"".join(v.to_bytes(16, "little", signed=True) for v in filled))
    mask = None if len(present) == len(filled) else pa.array([v is not None for v in values]).buffers()[1]
    return pa.Array.from_buffers(OUTPUT_TYPE, len(filled), [mask, data], null_count=len(filled) - len(present))
