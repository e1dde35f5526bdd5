"""API keys: stored hashed, verified, revoked; the `k2 api-key` commands."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from k2.api.keys import KeyStore, Scope
from k2.cli import app
from k2.errors import ConfigError


def test_keys_are_stored_hashed_and_verified(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    key, record = store.create("analyst", (Scope.READ, Scope.SQL), rate_limit="5/second")
    text = (tmp_path / "keys.json").read_text()
    assert key not in text and key.split("_", 2)[2] not in text and record.sha256 in text
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600
    again = KeyStore(tmp_path / "keys.json")  # another process (the service) reads the file
    assert again.verify(key) == record
    assert again.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert again.verify("k2_" + record.key_id + "_") is None and again.verify("nonsense") is None
    store.revoke(record.key_id)
    assert again.verify(key) is None and not again.has_active_keys()
    with pytest.raises(ConfigError):
        store.create("x", (Scope.READ,), rate_limit="lots")
    with pytest.raises(ConfigError):
        store.revoke("000000000000")


def test_admin_scope_implies_the_others(tmp_path: Path) -> None:
    _, record = KeyStore(tmp_path / "k.json").create("ops", (Scope.ADMIN,))
    assert record.allows(Scope.READ) and record.allows(Scope.SQL)


def test_api_key_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    keys = tmp_path / "keys.json"
    created = runner.invoke(
        app, ["api-key", "create", "--name", "nb", "--scope", "read", "--scope", "sql", "--keys-file", str(keys)]
    )
    assert created.exit_code == 0, created.output
    key = next(line for line in created.output.splitlines() if line.startswith("k2_"))
    key_id = json.loads(keys.read_text())["keys"][0]["key_id"]
    assert KeyStore(keys).verify(key) is not None
    listed = runner.invoke(app, ["api-key", "list", "--keys-file", str(keys)])
    assert (
        listed.exit_code == 0 and key_id in listed.output and "read,sql" in listed.output and key not in listed.output
    )
    assert runner.invoke(app, ["api-key", "revoke", key_id, "--keys-file", str(keys)]).exit_code == 0
    assert KeyStore(keys).verify(key) is None
    bad = runner.invoke(app, ["api-key", "create", "--name", "x", "--scope", "write", "--keys-file", str(keys)])
    assert bad.exit_code == 1 and "unknown scope" in bad.output
