"""Service logs are machine-readable: every event K2 logs has a dotted lower-case name
(``component.what``) and is a literal, never an f-string, so dashboards and log queries can match it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import k2

SRC = Path(k2.__file__).parent
_LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
_EVENT = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)+")
# Modules still using flat snake_case event names (e.g. "kafka_ready"): to be renamed "component.what".
PENDING_RENAME = ("devservices/",)


def _log_calls() -> list[tuple[str, int, ast.expr]]:
    calls = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _LEVELS
                and isinstance(node.func.value, ast.Name | ast.Attribute)
                and (node.func.value.id if isinstance(node.func.value, ast.Name) else node.func.value.attr)
                in {"log", "_log", "logger", "self._log"}
                and node.args
            ):
                calls.append((f"{path.relative_to(SRC)}:{node.lineno}", node.lineno, node.args[0]))
    return calls


def test_every_log_event_is_a_dotted_literal_name() -> None:
    calls = _log_calls()
    assert len(calls) > 20
    problems = [
        f"{where}: {ast.unparse(event)}"
        for where, _, event in calls
        if not where.startswith(PENDING_RENAME)
        and not (where.startswith("logging.py") and isinstance(event, ast.Name))  # RateLimitedLogger passes through
        and not (isinstance(event, ast.Constant) and isinstance(event.value, str) and _EVENT.fullmatch(event.value))
    ]
    assert problems == []
