"""Property-based fuzzing of the live service from its own OpenAPI (Schemathesis), and injection /
sandbox-escape attempts through every parameter: 4xx, and nothing touched.

Bounded and deterministic: a fixed number of examples per operation, ``derandomize`` (Hypothesis
derives its examples from the test itself, so every run sends the same requests), no deadline.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.config import SchemathesisConfig

from k2.lake.catalog import load_or_create_table, open_catalog
from k2.schema.kinds import RecordKind
from tests.integration.api.conftest import Lake, LiveApi

pytestmark = pytest.mark.integration


# What JSON Schema cannot say: whether a SQL text is valid, whether a cursor is one the service issued,
# and that bars and VWAP need exactly one of symbol and instrument (two optional query parameters). For
# those operations a schema-valid request may be refused with 400.
_ACCEPT_400 = {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "403", "404", "406"]}}
CONFIG = SchemathesisConfig.from_dict(
    {
        "operations": [
            {"include-path": path, "checks": _ACCEPT_400}
            for path in ("/v1/sql", "/v1/trades", "/v1/quotes", "/v1/asof", "/v1/ohlcv", "/v1/vwap", "/v1/bbo")
        ]
    }
)
SETTINGS = settings(
    max_examples=80,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def test_no_server_errors_and_no_schema_violations(live_api: LiveApi) -> None:
    """Every operation of /openapi.json, 80 generated requests each, every Schemathesis check.

    (Driven through Hypothesis directly: Schemathesis' lazy pytest fixture loader does not run
    under pytest 9.)
    """
    schema = schemathesis.openapi.from_url(f"{live_api.url}/openapi.json", config=CONFIG)
    auth = {"Authorization": f"Bearer {live_api.keys.admin}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/trades", "/v1/quotes", "/v1/spread", "/v1/bbo", "/v1/asof"}
    assert len(operations) >= 17
    for operation in operations:

        @SETTINGS
        @given(case=operation.as_strategy())
        def fuzz(case: Any) -> None:
            case.call_and_validate(headers=auth)

        fuzz()


# --- injection and sandbox escapes ----------------------------------------------------------------
def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _snapshots(lake: Lake) -> dict[RecordKind, Any]:
    catalog = open_catalog(lake.settings.lake)
    return {kind: load_or_create_table(catalog, lake.settings.lake, kind).current_snapshot() for kind in RecordKind}


@pytest.fixture
def untouched(api_lake: Lake, tmp_path: Path) -> Iterator[Path]:
    """Asserts afterwards that the tables, the warehouse's files and the escape targets are unchanged."""
    warehouse = api_lake.settings.lake.warehouse
    snapshots = _snapshots(api_lake)
    before = _tree(warehouse)
    yield tmp_path
    assert _snapshots(api_lake) == snapshots
    assert _tree(warehouse) == before
    assert list(tmp_path.iterdir()) == [], "a statement wrote outside the warehouse"


INJECTIONS = [
    "BTCUSDT' OR '1'='1",
    "BTCUSDT'; DROP VIEW trades; --",
    '" OR 1=1 --',
    "'); COPY trades TO '/tmp/k2-x.csv'; --",
    "$files",
    "../../etc/passwd",
    "BTCUSDT\x00",
    "1; ATTACH 'x.db'",
]


def _query_parameters(http: httpx.Client) -> list[tuple[str, str, str]]:
    spec = http.get("/openapi.json").json()
    return [
        (method.upper(), path, p["name"])
        for path, methods in spec["paths"].items()
        for method, op in methods.items()
        for p in op.get("parameters", [])
        if p["in"] == "query"
    ]


def test_injection_through_every_query_parameter_is_refused(live_api: LiveApi, untouched: Path) -> None:
    with live_api.client(live_api.keys.admin) as http:
        parameters = _query_parameters(http)
        names = {name for _, _, name in parameters}
        assert names >= {"symbol", "exchange", "start", "end", "cursor", "interval", "tolerance", "limit", "day"}
        assert {path for _, path, _ in parameters} >= {"/v1/quotes", "/v1/spread", "/v1/bbo", "/v1/asof"}
        for method, path, name in parameters:
            for payload in INJECTIONS:
                params = {"symbol": "BTCUSDT", name: payload}
                body = {"query": "SELECT 1"} if method == "POST" else None
                response = http.request(method, path, params=params, json=body)
                assert 400 <= response.status_code < 500, (method, path, name, payload, response.text)
                assert response.json()["error"]["code"]


def test_sql_sandbox_escapes_are_refused_and_touch_nothing(live_api: LiveApi, untouched: Path, api_lake: Lake) -> None:
    target = untouched / f"k2-escape-{uuid.uuid4().hex}"
    warehouse = api_lake.settings.lake.warehouse.resolve()
    escapes = [
        f"COPY trades TO '{target}.csv'",
        f"COPY (SELECT * FROM trades) TO '{target}.parquet' (FORMAT parquet)",
        f"EXPORT DATABASE '{target}'",
        f"ATTACH '{target}.duckdb' AS x",
        f"ATTACH '{warehouse}/catalog.db' AS c (TYPE sqlite)",
        "CREATE TABLE t AS SELECT * FROM trades",
        "INSERT INTO trades SELECT * FROM trades",
        "DROP VIEW trades",
        "SET enable_external_access = true",
        "SET allowed_directories = ['/']",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SELECT 1; DROP VIEW trades",
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM read_text('{warehouse}/catalog.db')",
        f"SELECT * FROM read_text('{os.environ.get('HOME', '/root')}/.bash_history')",
        "SELECT * FROM glob('/*')",
        "SELECT * FROM read_parquet('https://example.com/x.parquet')",
        f"SELECT * FROM read_csv('{target}.csv')",
        "CALL pragma_version()",
        "PRAGMA enable_profiling",
        f"SELECT * FROM read_json_auto('{target}')",
    ]
    with live_api.client(live_api.keys.admin) as http:
        for text in escapes:
            response = http.post("/v1/sql", json={"query": text})
            assert response.status_code in (400, 403), (text, response.status_code, response.text)
            assert str(warehouse) not in response.text
        # Values are bound, never spliced: an injected string matches nothing.
        bound = http.post(
            "/v1/sql",
            json={"query": "SELECT count(*) AS n FROM trades WHERE symbol = ?", "params": ["BTCUSDT' OR '1'='1"]},
        )
        assert bound.status_code == 200 and bound.json()["rows"] == [[0]]
        assert http.get("/v1/trades", params={"limit": 1}).status_code == 200  # the view is still there
