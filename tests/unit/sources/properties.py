"""What the venue parsers' property tests share: Hypothesis settings and the shape of their JSON."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

PROPERTIES = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure in CI is reproduced by running the test
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

DEEP = st.integers(min_value=1, max_value=100_000).map(lambda n: b"[" * n + b"1" + b"]" * n)
"""JSON nested up to 100,000 levels (msgspec's depth limit raises RecursionError)."""


def json_scalars(*venue_values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Any JSON scalar (floats included), plus a venue's boundary values."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**80), max_value=2**80)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20)
    )
    return st.one_of(scalars, *venue_values)


def json_values(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Small JSON documents (lists and objects nested around ``scalars``)."""
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
        max_leaves=12,
    )


def dumps(value: Any) -> bytes:
    """JSON as UTF-8, lone surrogates kept (so a frame can carry text no venue would send)."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
