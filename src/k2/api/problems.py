"""Errors as JSON: one body shape (:class:`~k2.api.models.ErrorBody`), the right status, nothing internal.

K2 errors are mapped here once (QueryError 400, ReadOnlyViolation 403, timeouts 504, a busy pool
503, ...). Messages pass through :func:`redact`, which removes server paths (the warehouse, the
catalog, home and temporary directories, any quoted or multi-segment absolute path) that a DuckDB
or pyiceberg message may carry. Anything unexpected is logged with its traceback and answered
``500 internal`` with no detail.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from k2.api.workers import PoolBusy, QueryTimeout
from k2.errors import ConfigError, K2Error, LakeError, QueryError, ReadOnlyViolation, SnapshotExpired
from k2.logging import get_logger

log = get_logger(__name__)


class Problem(Exception):
    """An error answer: status, stable code, message, extra headers (e.g. Retry-After)."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


_QUOTED_PATH = re.compile(r"""(["'])(?:file://|s3a?://|gs://|/)[^"']*\1""")
_BARE_PATH = re.compile(r"(?<![\w.)\]/])(?:file://|s3a?://)?/(?:[^\s/'\"]+/)+[^\s'\",;)]*")


class Redactor:
    """Removes server paths from messages; a root given as a URI (``s3://bucket/prefix``) also in the
    ``bucket/prefix`` form S3 client messages use."""

    def __init__(self, roots: Iterable[str | Path | None] = ()) -> None:
        texts = [str(r) for r in roots if r is not None and str(r)]
        uris = {t for t in texts if "://" in t}
        found = {str(Path(t).resolve()) for t in texts if t not in uris} | uris | {u.split("://", 1)[1] for u in uris}
        found |= {str(Path.home()), os.getcwd(), tempfile.gettempdir(), sys.prefix}
        self._roots = sorted((r for r in found if len(r) > 1), key=len, reverse=True)

    def __call__(self, message: str) -> str:
        for root in self._roots:
            message = message.replace(root, "<path>")
        message = _QUOTED_PATH.sub(lambda m: f"{m[1]}<path>{m[1]}", message)
        return _BARE_PATH.sub("<path>", message)


def from_error(exc: K2Error, redact: Redactor) -> Problem:
    """The answer to a K2 error."""
    text = redact(str(exc))
    if isinstance(exc, ReadOnlyViolation):
        return Problem(403, "read_only", text)
    if isinstance(exc, QueryTimeout):
        return Problem(504, "query_timeout", text)
    if isinstance(exc, PoolBusy):
        return Problem(503, "busy", text, {"Retry-After": "1"})
    if isinstance(exc, SnapshotExpired):  # maintenance removed files under the read: asking again plans anew
        return Problem(503, "snapshot_expired", text, {"Retry-After": "0"})
    if isinstance(exc, QueryError | ConfigError):
        return Problem(400, "invalid_query", text)
    if isinstance(exc, LakeError):
        return Problem(503, "table_unavailable", text, {"Retry-After": "5"})
    return Problem(500, "internal", "internal error")


def problem_response(problem: Problem) -> JSONResponse:
    body = {"error": {"code": problem.code, "message": problem.message}}
    return JSONResponse(body, status_code=problem.status, headers=problem.headers)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "too_large",
    415: "unsupported_media_type",
}


def install(app: object, redact: Redactor) -> None:
    """Register the handlers on a FastAPI app."""
    from fastapi import FastAPI

    assert isinstance(app, FastAPI)

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc)

    @app.exception_handler(K2Error)
    async def _k2(request: Request, exc: K2Error) -> JSONResponse:
        problem = from_error(exc, redact)
        if problem.status >= 500 and problem.code == "internal":
            log.error("api.error", path=request.url.path, error=str(exc), error_type=type(exc).__name__)
        return problem_response(problem)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for error in exc.errors()[:10]:
            where = ".".join(str(p) for p in error.get("loc", ()))
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
        return problem_response(Problem(422, "invalid_request", redact("; ".join(parts) or "invalid request")))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else code
        return problem_response(Problem(exc.status_code, code, redact(detail), exc.headers))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("api.unexpected_error", path=request.url.path, error_type=type(exc).__name__)
        return problem_response(Problem(500, "internal", "internal error"))
