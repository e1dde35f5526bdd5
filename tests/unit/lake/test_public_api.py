"""K2 uses only pyiceberg's public API: private names changed inside the pinned range before.

Every module under src/ is parsed: no ``from pyiceberg... import _name`` (multi-line and aliased
imports included), no import of a private pyiceberg module, and no access to the snapshot
producers' internals, as an attribute or through ``getattr``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import k2

SRC = Path(k2.__file__).parent
PRODUCER_INTERNALS = frozenset({"_written_manifests", "_merge_enabled", "_min_count_to_merge"})


def _private_parts(module: str) -> list[str]:
    return [part for part in module.split(".") if part.startswith("_")]


def violations(source: str, filename: str = "<source>") -> list[str]:
    """Every use of a private pyiceberg name or producer internal in ``source``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pyiceberg":
            module = node.module or ""
            found.extend(f"{where}: private module {module}" for _ in _private_parts(module)[:1])
            found.extend(f"{where}: {module}.{a.name}" for a in node.names if a.name.startswith("_"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "pyiceberg" and _private_parts(alias.name):
                    found.append(f"{where}: private module {alias.name}")
        elif isinstance(node, ast.Attribute) and node.attr in PRODUCER_INTERNALS:
            found.append(f"{where}: .{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in PRODUCER_INTERNALS
        ):
            found.append(f"{where}: {node.func.id}(..., {node.args[1].value!r})")
    return found


def test_src_uses_no_private_pyiceberg_names() -> None:
    modules = sorted(SRC.rglob("*.py"))
    assert len(modules) > 50  # the walk really sees the package
    problems = [v for path in modules for v in violations(path.read_text(), str(path.relative_to(SRC.parent)))]
    assert problems == []


def test_the_checker_catches_every_form() -> None:
    source = """
from pyiceberg.io.pyarrow import (
    ArrowScan,
    _determine_partitions,
)
from pyiceberg.io.pyarrow import _to_requested_schema as requested
import pyiceberg._private.thing
from pyiceberg._internal import Public
producer._written_manifests
producer._merge_enabled = True
setattr(producer, "_min_count_to_merge", 2)
from pyiceberg.table import Table, TableProperties
producer.snapshot_id
"""
    found = violations(source)
    assert [v.split(": ", 1)[1] for v in found] == [
        "pyiceberg.io.pyarrow._determine_partitions",
        "pyiceberg.io.pyarrow._to_requested_schema",
        "private module pyiceberg._private.thing",
        "private module pyiceberg._internal",
        "._written_manifests",
        "._merge_enabled",
        "setattr(..., '_min_count_to_merge')",
    ]
