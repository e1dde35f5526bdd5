"""The evolution rule of canonical records: first version in fresh-id order, later ones append optional
primitive fields with the ids Iceberg gives added columns (k2.schema.evolution)."""

from __future__ import annotations

import dataclasses

import pytest

from k2.schema.evolution import SchemaHistoryError, check_history, fresh_ids, missing_fields, relaxed_fields, step
from k2.schema.kinds import KINDS, RecordKind
from k2.schema.model import Field, ListType, LongType, RecordSchema, StringType
from k2.schema.quote import QUOTE_V1, QUOTE_V2, QUOTE_VERSIONS
from k2.schema.trade import TRADE_V2, TRADE_V3, TRADE_VERSIONS


def test_every_kinds_history_follows_the_rule() -> None:
    for spec in KINDS.values():
        check_history(spec.history)
        assert spec.record is spec.history[-1]
    assert KINDS[RecordKind.TRADES].history == TRADE_VERSIONS == (TRADE_V2, TRADE_V3)


def test_fresh_ids_are_top_level_first_then_nested() -> None:
    # trade_conditions (11) holds the list element, vendor_data (15) the map key and value.
    assert fresh_ids(TRADE_V2) == TRADE_V2.all_ids() == [*range(1, 12), 17, *range(12, 16), 18, 19, 16]


def _v3_with(*fields: Field) -> tuple[RecordSchema, RecordSchema]:
    return (TRADE_V2, dataclasses.replace(TRADE_V3, fields=(*TRADE_V2.fields, *fields)))


def test_an_added_field_must_take_the_id_iceberg_gives_it() -> None:
    with pytest.raises(SchemaHistoryError, match="must have id 20"):
        check_history(_v3_with(Field(17, "instrument", StringType(), "x", False)))  # what a fresh create gives
    check_history(_v3_with(Field(20, "a", StringType(), "x", False), Field(21, "b", LongType(), "y", False)))


def test_an_added_field_must_be_optional_and_primitive() -> None:
    with pytest.raises(SchemaHistoryError, match="optional and primitive"):
        check_history(_v3_with(Field(20, "instrument", StringType(), "x", True)))
    with pytest.raises(SchemaHistoryError, match="optional and primitive"):
        check_history(_v3_with(Field(20, "tags", ListType(21, StringType()), "x", False)))


def test_a_later_version_keeps_every_field() -> None:
    changed = dataclasses.replace(TRADE_V3, fields=TRADE_V3.fields[1:])
    with pytest.raises(SchemaHistoryError, match="must keep every field"):
        check_history((TRADE_V2, changed))


def test_the_first_version_must_declare_fresh_ids() -> None:
    shuffled = dataclasses.replace(
        TRADE_V2, fields=(dataclasses.replace(TRADE_V2.fields[0], id=99), *TRADE_V2.fields[1:])
    )
    with pytest.raises(SchemaHistoryError, match="order Iceberg assigns"):
        check_history((shuffled,))


def test_a_step_may_relax_required_fields_never_the_reverse() -> None:
    """Quote v2 relaxes v1's sizes: a relaxing step; making an optional field required is refused."""
    assert KINDS[RecordKind.QUOTES].history == QUOTE_VERSIONS == (QUOTE_V1, QUOTE_V2)
    change = step(QUOTE_V1, QUOTE_V2)
    assert change.added == () and [f.name for f in change.relaxed] == ["bid_size", "ask_size"]
    assert [f.name for f in relaxed_fields(QUOTE_VERSIONS, ["bid_size", "ask_size", "symbol"])] == [
        "bid_size",
        "ask_size",
    ]
    assert relaxed_fields(QUOTE_VERSIONS, ["symbol"]) == []
    stricter = dataclasses.replace(
        QUOTE_V2, version=3, fields=tuple(dataclasses.replace(f, required=True) for f in QUOTE_V2.fields)
    )
    with pytest.raises(SchemaHistoryError, match="never the reverse"):
        check_history((QUOTE_V1, QUOTE_V2, stricter))
    retyped = dataclasses.replace(
        QUOTE_V2,
        fields=tuple(dataclasses.replace(f, type=LongType()) if f.name == "symbol" else f for f in QUOTE_V2.fields),
    )
    with pytest.raises(SchemaHistoryError, match="same id, name and type"):
        check_history((QUOTE_V1, retyped))


def test_missing_fields_are_the_later_versions_fields_a_table_lacks() -> None:
    assert [f.name for f in missing_fields(TRADE_VERSIONS, TRADE_V2.names)] == ["instrument"]
    assert missing_fields(TRADE_VERSIONS, TRADE_V3.names) == []
    with pytest.raises(SchemaHistoryError, match="without symbol was not created by K2"):
        missing_fields(TRADE_VERSIONS, [n for n in TRADE_V2.names if n != "symbol"])
