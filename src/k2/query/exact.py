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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Context, Decimal

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
    data = array.buffers()[1]
    raw = memoryview(data)[array.offset * 16 : (array.offset + len(array)) * 16]
    values: list[int | None] = [int.from_bytes(raw[i : i + 16], "little", signed=True) for i in range(0, len(raw), 16)]
    if array.null_count:
        for i, valid in enumerate(array.is_valid().to_pylist()):
            if not valid:
                values[i] = None
    return values


def decimal_array(values: Iterable[int | None], what: str) -> pa.Array:
    """A decimal128(38, 12) array from unscaled integers; QueryError when one does not fit."""
    out: list[Decimal | None] = []
    for value in values:
        if value is None:
            out.append(None)
            continue
        if not -DECIMAL_LIMIT < value < DECIMAL_LIMIT:
            raise QueryError(f"{what} {to_decimal(value)} does not fit decimal(38, 12)")
        out.append(to_decimal(value))
    return pa.array(out, OUTPUT_TYPE)
