"""Protection: keys on every route, scopes, the open mode's rules, and per-key rate limits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from k2.api.keys import KeyStore, Scope
from k2.config import ApiSettings, K2Settings
from k2.errors import ConfigError
from k2.services.serve import ApiServer
from tests.integration.api.conftest import Lake, LiveApi, api_settings

pytestmark = pytest.mark.integration

SAMPLE = {  # a valid value for each required parameter, so only the key decides the answer
    "symbol": "BTCUSDT",
}


def _operations(http: httpx.Client) -> list[tuple[str, str, dict[str, Any]]]:
    spec = http.get("/openapi.json").json()
    found = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            params = {p["name"]: SAMPLE[p["name"]] for p in op.get("parameters", []) if p.get("required")}
            if path in ("/v1/ohlcv", "/v1/vwap", "/v1/bbo"):  # a symbol or an instrument: OpenAPI cannot say one of two
                params["symbol"] = SAMPLE["symbol"]
            found.append((method.upper(), path, params))
    return found


def test_every_route_refuses_a_missing_or_wrong_key(live_api: LiveApi) -> None:
    with live_api.client() as anonymous:
        operations = _operations(anonymous)
        assert {path for _, path, _ in operations} >= {"/v1/quotes", "/v1/spread", "/v1/bbo", "/v1/asof"}
        assert len(operations) >= 17
        for method, path, params in operations:
            body = {"query": "SELECT 1"} if method == "POST" else None
            for headers in ({}, {"Authorization": "Bearer k2_000000000000_wrong"}, {"X-API-Key": "nonsense"}):
                response = anonymous.request(method, path, params=params, json=body, headers=headers)
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.json()["error"]["code"] == "unauthorized"
                assert response.headers["WWW-Authenticate"] == "Bearer"
    with live_api.client(live_api.keys.admin) as admin:
        for method, path, params in operations:
            body = {"query": "SELECT 1"} if method == "POST" else None
            response = admin.request(method, path, params=params, json=body)
            assert response.status_code == 200, (method, path, response.text)


def test_scopes_limit_what_a_key_may_do(live_api: LiveApi) -> None:
    sql = {"query": "SELECT 1 AS one"}
    with live_api.client(live_api.keys.read) as reader, live_api.client(live_api.keys.sql) as analyst:
        assert reader.post("/v1/sql", json=sql).status_code == 403
        assert reader.get("/v1/admin/keys").status_code == 403
        assert analyst.post("/v1/sql", json=sql).json()["rows"] == [[1]]
        assert analyst.get("/v1/trades").status_code == 403
    with httpx.Client(base_url=live_api.url, headers={"X-API-Key": live_api.keys.admin}) as admin:
        keys = admin.get("/v1/admin/keys").json()["data"]
    assert {k["name"] for k in keys} >= {"tests-admin", "tests-read", "tests-sql"}
    assert all("sha256" not in k for k in keys)


def test_open_mode_only_on_loopback_and_until_a_key_exists(
    api_lake: Lake, tmp_path: Any, start_api: Callable[[K2Settings], str]
) -> None:
    keys_file = tmp_path / "keys.json"
    url = start_api(api_settings(api_lake, auth="auto", keys_file=keys_file))
    with httpx.Client(base_url=url) as http:
        assert http.get("/v1/meta").json()["auth"] == "open"
        assert http.get("/v1/trades", params={"limit": 1}).status_code == 200
        key, record = KeyStore(keys_file).create("first", (Scope.READ,))
        assert http.get("/v1/trades", params={"limit": 1}).status_code == 401  # protected at once
        assert http.get("/v1/meta", headers={"Authorization": f"Bearer {key}"}).json()["auth"] == "keys"
        KeyStore(keys_file).revoke(record.key_id)
        assert http.get("/v1/meta", headers={"Authorization": f"Bearer {key}"}).json()["auth"] == "open"
    public = api_lake.settings.model_copy(update={"api": ApiSettings(host="0.0.0.0", port=0, auth="open")})
    with pytest.raises(ConfigError, match="non-loopback"):
        ApiServer(public)
    auto = api_lake.settings.model_copy(update={"api": ApiSettings(host="0.0.0.0", port=0, keys_file=keys_file)})
    server = ApiServer(auto)  # auto on a public address: keys required even with none configured
    try:
        server.start()
        port = server.url.rsplit(":", 1)[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            assert http.get("/v1/meta").status_code == 401
    finally:
        server.stop()


def test_rate_limit_answers_429_with_retry_after(
    api_lake: Lake, api_keys: Any, start_api: Callable[[K2Settings], str]
) -> None:
    url = start_api(api_settings(api_lake, auth="keys", rate_limit="5/minute"))
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_keys.read}"}) as http:
        answers = [http.get("/healthz") for _ in range(7)]
        other = http.get("/healthz", headers={"Authorization": f"Bearer {api_keys.admin}"})
    assert [r.status_code for r in answers] == [200] * 5 + [429, 429]
    limited = answers[-1]
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert other.status_code == 200  # limits are per key
