"""Apicurio Registry through its Confluent-compatible API with confluent-kafka's SchemaRegistryClient."""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from k2.schema import TRADE, to_avro
from tests.integration.services.fixtures import RegistryService

pytestmark = [pytest.mark.integration, pytest.mark.services]


def test_register_and_fetch_trade_schema(schema_registry: RegistryService) -> None:
    assert schema_registry.url.endswith("/apis/ccompat/v7")
    with SchemaRegistryClient({"url": schema_registry.url}) as client:
        _register_and_fetch(client)


def _register_and_fetch(client: SchemaRegistryClient) -> None:
    subject = f"trades-{uuid.uuid4().hex[:8]}-value"
    avsc = json.dumps(to_avro(TRADE))

    schema_id = client.register_schema(subject, Schema(avsc, "AVRO"))

    fetched = client.get_schema(schema_id)
    assert fetched.schema_type == "AVRO"
    assert json.loads(fetched.schema_str) == json.loads(avsc)
    latest = client.get_latest_version(subject)
    assert (latest.schema_id, latest.version, latest.subject) == (schema_id, 1, subject)
    assert client.get_subjects().count(subject) == 1
    # Registering the same schema again is idempotent: same id, still one version.
    assert client.register_schema(subject, Schema(avsc, "AVRO")) == schema_id
    assert client.get_versions(subject) == [1]
