"""Who may call what, and how often: API keys with scopes, the open mode, per-key rate limits.

Modes (``api.auth``; docs/api.md):

- ``auto`` (default): *open* while the service is bound to a loopback address and no active key
  exists, *keys* as soon as one does (checked per request, so creating the first key with the CLI
  protects a running service at once);
- ``keys``: a key is always required;
- ``open``: never; refused at start-up on a non-loopback address unless ``api.allow_open_non_loopback``.

A key is sent as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Missing or wrong: 401; valid
without the route's scope: 403. In open mode every caller has every scope. Rate limits (the
``limits`` library, moving window, per key or, in open mode, per client address): 429 with
``Retry-After`` in whole seconds.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from limits import RateLimitItem
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from k2.api.keys import KeyStore, Scope, parse_rate_limit
from k2.api.problems import Problem
from k2.config import ApiSettings
from k2.errors import ConfigError

_bearer = HTTPBearer(auto_error=False, description="An API key from `k2 api-key create`.")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The same key, in its own header.")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Principal:
    """The caller of a request: a key (``key_id``) or the open mode."""

    key_id: str | None
    scopes: frozenset[Scope]
    bucket: str  # the rate-limit identity
    limits: tuple[RateLimitItem, ...]


class Guard:
    """Authentication, scopes and rate limits for one service."""

    def __init__(self, api: ApiSettings, store: KeyStore) -> None:
        self.store = store
        self.setting = api.auth
        self.loopback = is_loopback(api.host)
        if api.auth == "open" and not self.loopback and not api.allow_open_non_loopback:
            raise ConfigError(
                f"refusing open mode (no API keys) on the non-loopback address {api.host}: create keys "
                "(`k2 api-key create`), bind 127.0.0.1, or set K2_API__ALLOW_OPEN_NON_LOOPBACK=true"
            )
        self.default_limits = tuple(parse_rate_limit(api.rate_limit))
        self._key_limits: dict[str, tuple[RateLimitItem, ...]] = {}
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def mode(self) -> Literal["open", "keys"]:
        if self.setting == "open":
            return "open"
        if self.setting == "keys":
            return "keys"
        return "open" if self.loopback and not self.store.has_active_keys() else "keys"

    def authenticate(self, request: Request, key: str | None) -> Principal:
        if self.mode() == "open":
            client = request.client.host if request.client else "unknown"
            return Principal(None, frozenset(Scope), f"open:{client}", self.default_limits)
        if not key:
            raise Problem(401, "unauthorized", "an API key is required", {"WWW-Authenticate": "Bearer"})
        record = self.store.verify(key)
        if record is None:
            raise Problem(401, "unauthorized", "unknown or revoked API key", {"WWW-Authenticate": "Bearer"})
        limits = self.default_limits
        if record.rate_limit:
            limits = self._key_limits.get(record.rate_limit) or tuple(parse_rate_limit(record.rate_limit))
            self._key_limits[record.rate_limit] = limits
        scopes = frozenset(Scope) if Scope.ADMIN in record.scopes else frozenset(record.scopes)
        return Principal(record.key_id, scopes, f"key:{record.key_id}", limits)

    def check_rate(self, principal: Principal) -> None:
        for item in principal.limits:
            if not self._limiter.hit(item, principal.bucket):
                reset = self._limiter.get_window_stats(item, principal.bucket).reset_time
                wait = max(1, math.ceil(reset - time.time()))
                raise Problem(
                    429, "rate_limited", f"rate limit {item} exceeded; retry in {wait} s", {"Retry-After": str(wait)}
                )


def require(scope: Scope) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A FastAPI dependency: the authenticated, authorised, rate-limited caller of a route."""

    async def dependency(
        request: Request,
        bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008 - FastAPI's idiom
        header_key: str | None = Depends(_header),
    ) -> Principal:
        guard: Guard = request.app.state.guard
        key = bearer.credentials if bearer is not None else header_key
        principal = guard.authenticate(request, key)
        if scope not in principal.scopes:
            raise Problem(403, "forbidden", f"this key lacks the {scope.value!r} scope")
        guard.check_rate(principal)
        return principal

    return dependency
