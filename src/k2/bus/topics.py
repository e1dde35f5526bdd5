"""Topic and subject naming: ``market.<asset_class>.<data_type>.<exchange>``, one topic per venue and type.

Each venue has a topic per record kind it publishes (``market.crypto.trades.binance``,
``market.crypto.quotes.binance``) and a quality-events topic (``market.crypto.quality_events.binance``:
gaps, duplicates, anomalies seen by `k2 ingest`).
Symbols are message keys (per-symbol ordering), never part of a topic name. The value schema is
registered under the Confluent ``TopicNameStrategy`` subject ``<topic>-value``; undecodable messages
go to ``<topic><dlq_suffix>`` (``.dlq`` by default).
"""

from __future__ import annotations

import re

from k2.errors import ConfigError
from k2.schema.kinds import RecordKind, spec

_PART = re.compile(r"^[a-z0-9_]+$")

QUALITY_EVENTS = "quality_events"  # the data type part of a venue's quality-events topic


def topic_name(asset_class: str, data_type: str, exchange: str) -> str:
    """``market.crypto.trades.binance``: every part lower-case letters, digits or ``_``."""
    parts = [p.strip().lower() for p in (asset_class, data_type, exchange)]
    for part in parts:
        if not _PART.match(part):
            raise ConfigError(f"invalid topic name part {part!r}: use letters, digits and _ only")
    return "market." + ".".join(parts)


def kind_topic(asset_class: str, kind: RecordKind | str, venue: str) -> str:
    """A venue's topic of a record kind: ``market.crypto.quotes.binance`` (k2.schema.kinds)."""
    return topic_name(asset_class, spec(kind).topic_part, venue)


def trades_topic(asset_class: str, venue: str) -> str:
    """A venue's trades topic: ``market.crypto.trades.binance``."""
    return topic_name(asset_class, "trades", venue)


def quality_events_topic(asset_class: str, venue: str) -> str:
    """A venue's quality-events topic: ``market.crypto.quality_events.binance``."""
    return topic_name(asset_class, QUALITY_EVENTS, venue)


def value_subject(topic: str) -> str:
    """The schema-registry subject of a topic's values (TopicNameStrategy)."""
    return f"{topic}-value"


def dlq_topic(topic: str, suffix: str = ".dlq") -> str:
    """The dead-letter topic of ``topic``."""
    return f"{topic}{suffix}"
