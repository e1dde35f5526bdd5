"""Dead-letter headers and topic naming."""

from __future__ import annotations

import pytest

from k2.bus.dlq import MAX_ERROR_CHARS, dlq_headers
from k2.bus.topics import dlq_topic, topic_name, value_subject
from k2.errors import ConfigError


def test_dlq_headers_keep_the_original_ones_then_say_why_and_where() -> None:
    headers = dlq_headers(
        reason="undecodable",
        error="EOFError: truncated",
        topic="market.crypto.trades.binance",
        partition=3,
        offset=12345,
        timestamp_ms=1723161255342,
        group="k2-iceberg-trades",
        original=[("trace", b"abc")],
    )
    assert headers == [
        ("trace", b"abc"),
        ("k2.dlq.reason", b"undecodable"),
        ("k2.dlq.error", b"EOFError: truncated"),
        ("k2.dlq.source.topic", b"market.crypto.trades.binance"),
        ("k2.dlq.source.partition", b"3"),
        ("k2.dlq.source.offset", b"12345"),
        ("k2.dlq.consumer.group", b"k2-iceberg-trades"),
        ("k2.dlq.source.timestamp_ms", b"1723161255342"),
    ]


def test_dlq_error_text_is_truncated() -> None:
    headers = dict(
        dlq_headers(reason="r", error="x" * 5000, topic="t", partition=0, offset=0, timestamp_ms=None, group="g")
    )
    error = headers["k2.dlq.error"]
    assert isinstance(error, bytes)
    assert len(error) == MAX_ERROR_CHARS
    assert error.endswith(b"...")
    assert "k2.dlq.source.timestamp_ms" not in headers


def test_topic_names() -> None:
    assert topic_name("crypto", "trades", "binance") == "market.crypto.trades.binance"
    assert topic_name("Crypto", "trades", "BINANCE") == "market.crypto.trades.binance"
    assert value_subject("market.crypto.trades.binance") == "market.crypto.trades.binance-value"
    assert dlq_topic("market.crypto.trades.binance") == "market.crypto.trades.binance.dlq"
    with pytest.raises(ConfigError, match="invalid topic name part"):
        topic_name("crypto", "trades", "bin.ance")
