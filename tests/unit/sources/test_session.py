"""WebSocketSession pieces that need no server: backoff, TLS settings, connection options, stop."""

from __future__ import annotations

import asyncio
import random
import ssl
import time

import certifi
import pytest

from k2.config import SourceSettings
from k2.errors import ConfigError
from k2.sources.base import RawFrame
from k2.sources.session import (
    MAX_MESSAGE_BYTES,
    PING_INTERVAL_S,
    PING_TIMEOUT_S,
    WebSocketSession,
    backoff_delays,
    ssl_context_for,
    wall_clock_us,
)


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    delays = backoff_delays(0.5, 4.0, random.Random(7))
    got = [next(delays) for _ in range(7)]
    reference = random.Random(7)
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert got == [reference.uniform(0.0, c) for c in ceilings]
    assert all(0.0 <= d <= c for d, c in zip(got, ceilings, strict=True))


def test_wss_uses_a_verifying_context_with_certifi_roots() -> None:
    context = ssl_context_for("wss://stream.binance.com:9443/stream?streams=btcusdt@trade")
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.cert_store_stats()["x509_ca"] == len(
        ssl.create_default_context(cafile=certifi.where()).get_ca_certs()
    )
    assert context.cert_store_stats()["x509_ca"] > 50


def test_plain_ws_uses_no_tls_and_other_schemes_are_refused() -> None:
    assert ssl_context_for("ws://127.0.0.1:9443") is None
    with pytest.raises(ConfigError, match="not a WebSocket URL"):
        ssl_context_for("https://api.binance.com")
    with pytest.raises(ConfigError):
        WebSocketSession("http://example.invalid", venue="binance", settings=SourceSettings())


def test_connect_options() -> None:
    wss = WebSocketSession(
        "wss://stream.binance.com:9443/ws", venue="binance", settings=SourceSettings(open_timeout_s=3)
    )
    kwargs = wss.connect_kwargs()
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert kwargs["ssl_context"].check_hostname is True
    assert kwargs["websocket_handshake_timeout"] == 3
    assert kwargs["max_frame_size"] == MAX_MESSAGE_BYTES
    assert kwargs["enable_auto_ping"] is True
    assert (kwargs["auto_ping_idle_timeout"], kwargs["auto_ping_reply_timeout"]) == (PING_INTERVAL_S, PING_TIMEOUT_S)
    assert kwargs["enable_auto_pong"] is True
    assert kwargs["use_aiofastnet"] is False  # CPython's ssl module does the TLS
    plain = WebSocketSession("ws://127.0.0.1:1/ws", venue="binance", settings=SourceSettings())
    assert "ssl_context" not in plain.connect_kwargs()


def test_initial_stats_and_stop_before_run() -> None:
    session = WebSocketSession("ws://127.0.0.1:1/ws", venue="binance", settings=SourceSettings())
    assert session.get_stats() == {
        "venue": "binance",
        "url": "ws://127.0.0.1:1/ws",
        "connected": False,
        "connections": 0,
        "reconnects": 0,
        "reconnects_by_reason": {"dropped": 0, "error": 0, "max_age": 0},
        "frames": 0,
        "last_frame_at_us": None,
        "connected_at_us": None,
        "failed_attempts": 0,
        "last_error": None,
    }
    assert session.stats == session.get_stats()
    session.stop()

    async def sink(frames: list[RawFrame]) -> None:
        raise AssertionError("no frame expected")

    asyncio.run(asyncio.wait_for(session.run(sink), 5))  # returns at once: stopped before it started
    assert session.connections == 0


def test_wall_clock_is_utc_microseconds() -> None:
    before = time.time_ns() // 1000
    now = wall_clock_us()
    assert before <= now <= time.time_ns() // 1000
    assert 1_700_000_000_000_000 < now < 4_000_000_000_000_000
