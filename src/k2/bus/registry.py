"""The schema registry, through confluent-kafka's ``SchemaRegistryClient`` (Confluent's REST API).

Works unchanged against Confluent Schema Registry and Apicurio Registry's ``/apis/ccompat/v7``.
Registry errors are translated here: an incompatible schema becomes
:class:`~k2.errors.IncompatibleSchema`, an unreachable registry :class:`~k2.errors.BusUnavailable`.
"""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from k2.bus.serde import schema_json
from k2.errors import BusError, BusUnavailable, IncompatibleSchema
from k2.logging import get_logger
from k2.schema.model import RecordSchema

log = get_logger(__name__)

BACKWARD = "BACKWARD"


class SchemaRegistry:
    """Registers K2's canonical schemas and fetches writer schemas by id."""

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self.url = url
        self._client = SchemaRegistryClient({"url": url, "timeout": int(timeout_s)})

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SchemaRegistryError:
            raise
        except Exception as exc:  # httpx / connection errors
            raise BusUnavailable(f"schema registry {self.url} unreachable ({what}): {exc}") from exc

    def register(self, subject: str, record: RecordSchema, compatibility: str = BACKWARD) -> int:
        """Register ``record`` under ``subject`` (idempotent) with ``compatibility``; the schema id.

        :class:`~k2.errors.IncompatibleSchema` when the registry rejects it.
        """
        text = schema_json(record)
        try:
            self._call("set compatibility", self._client.set_compatibility, subject_name=subject, level=compatibility)
            schema_id = int(self._call("register", self._client.register_schema, subject, Schema(text, "AVRO")))
        except SchemaRegistryError as exc:
            if exc.http_status_code == 409 or exc.error_code in (409, 40901):
                raise IncompatibleSchema(
                    f"schema {record.name} v{record.version} is not {compatibility} compatible with the schemas"
                    f" registered under {subject!r}: {exc.error_message}"
                ) from exc
            raise BusError(f"schema registry refused {record.name} v{record.version} under {subject!r}: {exc}") from exc
        log.info("registry.registered", subject=subject, schema_id=schema_id, version=record.version)
        return schema_id

    def is_compatible(self, subject: str, record: RecordSchema) -> bool:
        """Whether ``record`` could be registered under ``subject`` now (True when the subject is new)."""
        try:
            return bool(
                self._call(
                    "test compatibility",
                    self._client.test_compatibility,
                    subject,
                    Schema(schema_json(record), "AVRO"),
                )
            )
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return True
            raise BusError(f"schema registry compatibility check failed for {subject!r}: {exc}") from exc

    def fetch(self, schema_id: int) -> Any:
        """The Avro schema (parsed JSON) registered under ``schema_id``: :class:`KeyError` when there is
        none, :class:`ValueError` when it is not an Avro schema. Not necessarily a record: the
        ``"string"`` schema commonly registered for keys is valid here (the decoder rejects it)."""
        try:
            schema = self._call("get schema", self._client.get_schema, schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise KeyError(schema_id) from exc
            raise BusError(f"schema registry failed to return schema {schema_id}: {exc}") from exc
        if schema.schema_type not in (None, "AVRO"):
            raise ValueError(f"a {schema.schema_type} schema, not Avro")
        return json.loads(schema.schema_str)  # a JSONDecodeError is a ValueError too

    def close(self) -> None:
        self._client.close()
