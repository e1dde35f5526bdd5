"""Checking a request rate from arrival times at a server, without timing assumptions."""

from __future__ import annotations


def assert_paced(times: list[float], weight: float, burst: float, rate: float) -> None:
    """Arrival times (at the server) of requests sent one after another spend at most ``burst + rate *
    T``. Each request's arrival is compared with the arrival of the one *before* the window: that
    one was answered before the window's first request took its tokens, so the bound holds whatever
    delays a busy machine adds to an arrival (comparing with the window's own first arrival does not)."""
    for i in range(1, len(times)):
        for j in range(i, len(times)):  # requests i..j took their tokens after times[i - 1]
            assert (j - i + 1) * weight <= burst + rate * (times[j] - times[i - 1]) + 1e-6, (i, j, times)
