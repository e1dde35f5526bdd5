"""structlog set-up: JSON lines for services, a readable console renderer for humans.

Log calls use event names and key-value fields (``log.info("ws.connected", venue=..., url=...)``),
never f-strings. :class:`RateLimitedLogger` turns a flood of identical incidents into one line per
interval carrying a ``repeats`` count.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

LogFormat = Literal["json", "console"]

_SECRET_KEYS = ("password", "secret", "token", "api_key", "apikey", "authorization")


def _redact_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if any(marker in key.lower() for marker in _SECRET_KEYS):
            event_dict[key] = "***"
    return event_dict


class _CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at emit time (test runners swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def _stderr_logger(*_: Any) -> structlog.PrintLogger:
    return structlog.PrintLogger(file=sys.stderr)


_configured: tuple[str, LogFormat] = ("INFO", "console")


def logging_config() -> tuple[str, LogFormat]:
    """The (level, format) of the last :func:`configure_logging`: a child process configures the same."""
    return _configured


def configure_logging(level: str = "INFO", fmt: LogFormat = "console") -> None:
    """Configure structlog (and the stdlib root logger it renders through) once per process."""
    global _configured
    _configured = (level, fmt)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    handler = _CurrentStderrHandler()
    if fmt == "json":  # libraries' stdlib records become JSON lines too: one format per service log
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=[
                    structlog.stdlib.add_log_level,
                    structlog.stdlib.add_logger_name,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                ],
                processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for noisy in ("websockets", "picows", "aiofastnet", "httpx", "httpcore"):  # a line per connection / request
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


def logs_json() -> bool:
    """Whether log events are rendered as JSON lines (services) rather than for a human console."""
    processors = structlog.get_config()["processors"]
    return bool(processors) and isinstance(processors[-1], structlog.processors.JSONRenderer)


def get_logger(name: str, **context: Any) -> Any:
    """A bound structlog logger named after its module, with optional bound context.

    Lazy: it picks up :func:`configure_logging` even when created at import time, before it.
    """
    return structlog.get_logger(name, **context)


class RateLimitedLogger:
    """Logs the first occurrence of each incident key, then at most one line per ``interval_s``.

    Suppressed repeats are counted and reported on the next line that gets through, so a flood of
    malformed frames produces one line per reason per interval instead of one per frame.
    """

    def __init__(self, logger: Any, interval_s: float = 10.0) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, event: str, key: str, **fields: Any) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        repeats = self._suppressed.pop(key, 0)
        self._log.warning(event, repeats=repeats, **fields)
