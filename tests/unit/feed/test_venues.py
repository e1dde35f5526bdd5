"""Several venues in one process: the command line's per-venue options, the settings they make and the
feeds a run resolves from them; symbols in every form reach the venue's own rules."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from k2 import sources
from k2.cliutil import per_venue, settings_from
from k2.config import FeedSettings, SourceSettings, load_settings
from k2.errors import ConfigError
from k2.feed.venues import feed_specs
from k2.schema.kinds import RecordKind
from k2.services.consume import default_topics
from tests import aggtest


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No k2.toml or K2_* variable of the machine leaks in; AGGTEST is a registered venue."""
    for key in [k for k in os.environ if k.startswith("K2_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("K2_CONFIG_FILE", str(tmp_path / "no-such-k2.toml"))
    aggtest.register()


def test_per_venue_values_are_told_apart_by_a_venue_prefix() -> None:
    venues = ("binance", "aggtest")
    shared, own = per_venue("symbols", ["BTC/USDT", "binance:ETHUSDT,bnbusdt", "AGGTEST:DOTUSDT", "ltcusdt"], venues)
    assert shared == ("BTC/USDT", "ltcusdt")
    assert own == {"binance": ("ETHUSDT", "bnbusdt"), "aggtest": ("DOTUSDT",)}
    shared, own = per_venue("ws_url", ["ws://127.0.0.1:1", "aggtest:ws://127.0.0.1:2"], venues)
    assert shared == "ws://127.0.0.1:1" and own == {"aggtest": "ws://127.0.0.1:2"}
    assert per_venue("rest_url", ["binance:http://h:1"], venues) == (None, {"binance": "http://h:1"})
    with pytest.raises(ConfigError, match="given twice for binance"):
        per_venue("ws_url", ["binance:ws://a", "binance:ws://b"], venues)
    with pytest.raises(ConfigError, match="binance is not among the venues run"):
        per_venue("symbols", ["binance:BTCUSDT"], ("aggtest",))


def test_command_line_options_become_per_venue_settings() -> None:
    settings = settings_from(
        venues="Binance,aggtest",
        symbols=["BTC/USDT", "aggtest:DOTUSDT,eth/usdt"],
        ws_url=["binance:ws://127.0.0.1:1", "aggtest:ws://127.0.0.1:2"],
        rest_url=["binance:http://127.0.0.1:1"],
    )
    source = settings.source
    assert source.venue_names == ("binance", "aggtest")
    assert source.symbols == ("BTC/USDT",)
    assert source.feeds == {
        "binance": FeedSettings(ws_url="ws://127.0.0.1:1", rest_url="http://127.0.0.1:1"),
        "aggtest": FeedSettings(symbols=("DOTUSDT", "ETH/USDT"), ws_url="ws://127.0.0.1:2"),
    }
    # The same settings from the environment / k2.toml shape round-trip.
    assert load_settings(**settings.model_dump()).source == source
    assert settings_from(venue="aggtest").source.venue_names == ("aggtest",)
    with pytest.raises(ConfigError, match="--venue or --venues"):
        settings_from(venue="binance", venues="aggtest")


def test_feed_settings_must_name_venues_of_the_run() -> None:
    with pytest.raises(ValueError, match=r"source\.feeds names aggtest, not among the venues run"):
        SourceSettings(venue="binance", feeds={"aggtest": FeedSettings(symbols=("DOTUSDT",))})


def test_each_venue_gets_its_symbols_kinds_and_urls() -> None:
    source = SourceSettings(
        venues=("binance", "aggtest"), symbols=("BTC/USDT",), ws_url="ws://shared",
        feeds={"aggtest": FeedSettings(symbols=("ETHUSDT", "DOT/USDT"), ws_url="ws://agg")},
    )  # fmt: skip
    binance, agg = feed_specs(source, rest_url="http://given")
    assert (binance.name, binance.symbols, binance.kinds) == (
        "binance",
        ("BTC/USDT",),
        (RecordKind.TRADES, RecordKind.QUOTES),
    )
    assert (binance.ws_url, binance.rest_url) == ("ws://shared", "http://given")
    # AGGTEST serves trades only: of the shared kinds it takes those it serves.
    assert (agg.name, agg.symbols, agg.kinds, agg.ws_url) == (
        "aggtest",
        ("ETHUSDT", "DOT/USDT"),
        (RecordKind.TRADES,),
        "ws://agg",
    )
    # One venue, or a venue's own kinds: every kind asked for must be served.
    own = source.model_copy(update={"feeds": {"aggtest": FeedSettings(kinds=("quotes",))}})
    with pytest.raises(ConfigError, match=r"aggtest does not serve quotes \(it serves trades\)"):
        feed_specs(own)
    assert [s.kinds for s in feed_specs(SourceSettings(venue="aggtest", kinds=("trades",)))] == [(RecordKind.TRADES,)]
    with pytest.raises(ConfigError, match="aggtest does not serve quotes"):
        feed_specs(SourceSettings(venue="aggtest"))  # alone, the default kinds are asked of it as given


def test_two_venues_may_not_write_one_exchange(monkeypatch: pytest.MonkeyPatch) -> None:
    twin = dataclasses.replace(aggtest.AGGTEST, name="aggtwin")
    monkeypatch.setitem(sources._registered, "aggtwin", twin)  # registered for this test only
    with pytest.raises(ConfigError, match="both write exchange AGGTEST"):
        feed_specs(SourceSettings(venues=("aggtest", "aggtwin")))


@pytest.mark.parametrize(
    ("given", "native"),
    [("BTCUSDT", "BTCUSDT"), ("btcusdt", "BTCUSDT"), ("BTC/USDT", "BTCUSDT"), (" eth/usdt ", "ETHUSDT")],
)
def test_symbols_in_either_form_reach_the_venues_native_form(given: str, native: str) -> None:
    source = SourceSettings(venues=("binance", "aggtest"), symbols=(given,))
    for spec in feed_specs(source):
        parser = spec.venue.build_parser(
            spec.symbols, spec.kinds, rules=spec.venue.rules(), validation=source.validation, is_sample_data=False
        )
        assert parser.symbols == (native,)


def test_a_symbol_the_venue_rejects_is_a_config_error() -> None:
    spec = feed_specs(SourceSettings(symbols=("BTC-USD",)))[0]
    with pytest.raises(ConfigError, match="invalid Binance symbol"):
        spec.venue.build_parser(
            spec.symbols, spec.kinds, rules=spec.venue.rules(), validation=SourceSettings().validation,
            is_sample_data=False,
        )  # fmt: skip


def test_consume_reads_every_venues_topic_of_a_kind() -> None:
    settings = settings_from(venues="binance,aggtest")
    assert default_topics(settings) == ["market.crypto.trades.binance", "market.crypto.trades.aggtest"]
    assert default_topics(settings, RecordKind.QUOTES) == ["market.crypto.quotes.binance"]  # AGGTEST has none
    assert default_topics(settings, RecordKind.QUALITY_EVENTS) == [
        "market.crypto.quality_events.binance", "market.crypto.quality_events.aggtest",
    ]  # fmt: skip
