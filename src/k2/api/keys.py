"""API keys: created by `k2 api-key create`, stored hashed in a JSON file, checked on every request.

A key reads ``k2_<id>_<secret>``: ``id`` (public, 12 hex digits) finds the record, ``secret`` (32 random
bytes, URL-safe base64) is verified against its SHA-256. A slow password hash is not needed: the
secret has 256 bits of entropy, so a stolen file cannot be brute-forced, and a fast hash keeps the
check in microseconds on every request. Only the hash is stored; the key is shown once, on creation.

The file (``api.keys_file``, default ``<warehouse>/api-keys.json``) is written atomically with mode
0600 and re-read by a running service when it changes, so a key created or revoked with the CLI
takes effect without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import limits

from k2.config import K2Settings
from k2.errors import ConfigError

_PREFIX = "k2_"


class Scope(StrEnum):
    """What a key may do: ``read`` the data endpoints, run ``sql``, ``admin`` (key list; implies both)."""

    READ = "read"
    SQL = "sql"
    ADMIN = "admin"


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    name: str
    scopes: tuple[Scope, ...]
    sha256: str = field(repr=False)
    created_at: str
    revoked_at: str | None = None
    rate_limit: str | None = None  # e.g. "200/second"; None: the service's api.rate_limit

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes

    def public(self) -> dict[str, object]:
        """Everything but the hash (for listings)."""
        out = asdict(self)
        del out["sha256"]
        out["scopes"] = [s.value for s in self.scopes]
        return out


def parse_rate_limit(text: str) -> list[limits.RateLimitItem]:
    """``"50/second"``, ``"20/second;600/minute"``, ... (the `limits` notation), or ConfigError."""
    try:
        items = limits.parse_many(text)
    except ValueError as exc:
        raise ConfigError(f"invalid rate limit {text!r}: use e.g. 50/second or 20/second;600/minute") from exc
    if not items:
        raise ConfigError(f"invalid rate limit {text!r}")
    return items


def keys_path(settings: K2Settings) -> Path:
    return settings.api.keys_file or settings.lake.warehouse / "api-keys.json"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _split(key: str) -> tuple[str, str] | None:
    if not key.startswith(_PREFIX):
        return None
    key_id, sep, secret = key[len(_PREFIX) :].partition("_")
    if not sep or len(key_id) != 12 or not secret:
        return None
    return key_id, secret


class KeyStore:
    """The key file: create, list, revoke (CLI) and verify (service). Thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._records: dict[str, KeyRecord] = {}
        self._stamp: tuple[int, int] | None = None

    # --- reading --------------------------------------------------------------------------------
    def _reload(self) -> None:
        """Re-read the file if it changed (by mtime and size); caller holds the lock."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._records, self._stamp = {}, None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            raw = json.loads(self.path.read_text())
            records = [KeyRecord(**{**r, "scopes": tuple(Scope(s) for s in r["scopes"])}) for r in raw.get("keys", [])]
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"cannot read the API key file {self.path}: {exc}") from exc
        self._records = {r.key_id: r for r in records}
        self._stamp = stamp

    def records(self) -> list[KeyRecord]:
        with self._lock:
            self._reload()
            return sorted(self._records.values(), key=lambda r: r.created_at)

    def has_active_keys(self) -> bool:
        return any(r.active for r in self.records())

    def verify(self, key: str) -> KeyRecord | None:
        """The active record of ``key``, or None (unknown, malformed, revoked or wrong secret)."""
        parts = _split(key)
        if parts is None:
            return None
        key_id, secret = parts
        with self._lock:
            self._reload()
            record = self._records.get(key_id)
        if record is None or not record.active:
            return None
        return record if hmac.compare_digest(record.sha256, _digest(secret)) else None

    # --- writing (CLI) --------------------------------------------------------------------------
    def create(self, name: str, scopes: tuple[Scope, ...], rate_limit: str | None = None) -> tuple[str, KeyRecord]:
        """A new key: returns the key itself (shown once) and its stored record."""
        if not scopes:
            raise ConfigError("a key needs at least one scope (read, sql, admin)")
        if rate_limit is not None:
            parse_rate_limit(rate_limit)
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        record = KeyRecord(
            key_id=key_id,
            name=name,
            scopes=tuple(dict.fromkeys(scopes)),
            sha256=_digest(secret),
            created_at=datetime.now(tz=UTC).isoformat(),
            rate_limit=rate_limit,
        )
        with self._lock:
            self._reload()
            self._records[key_id] = record
            self._write()
        return f"{_PREFIX}{key_id}_{secret}", record

    def revoke(self, key_id: str) -> KeyRecord:
        with self._lock:
            self._reload()
            record = self._records.get(key_id)
            if record is None:
                raise ConfigError(f"no API key with id {key_id!r}")
            if record.active:
                record = KeyRecord(**{**asdict(record), "revoked_at": datetime.now(tz=UTC).isoformat()})
                self._records[key_id] = record
                self._write()
        return record

    def _write(self) -> None:
        data = {"keys": [{**asdict(r), "scopes": [s.value for s in r.scopes]} for r in self._records.values()]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
        os.replace(tmp, self.path)
        self._stamp = None  # re-read (and stamp) on next access
