"""Every metric the code uses is declared in k2.metrics with exactly the labels it is used with,
and every declared metric is used somewhere (the prototype shipped five metric/label mismatches)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

import k2.metrics as metrics

SRC = Path(metrics.__file__).parent
DECLARED: dict[str, MetricWrapperBase] = {
    name: obj for name, obj in vars(metrics).items() if isinstance(obj, MetricWrapperBase)
}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local names bound to k2.metrics objects (``from k2.metrics import WS_CONNECTED as CONNECTED``)."""
    out = {name: name for name in DECLARED}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "k2.metrics":
            for alias in node.names:
                if alias.name in DECLARED:
                    out[alias.asname or alias.name] = alias.name
    return out


def _uses() -> list[tuple[Path, int, str, set[str] | None]]:
    """(file, line, metric constant, label names used or None when used without .labels).

    Metrics are found by their declared name, by an import alias, or as ``k2.metrics.NAME``;
    labels passed by keyword or positionally (mapped to the declared label order) are both checked.
    """
    found = []
    for path in SRC.rglob("*.py"):
        if path.name == "metrics.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        names = _aliases(tree)
        labelled: set[int] = set()
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "labels"
                and isinstance(node.func.value, ast.Name | ast.Attribute)
            ):
                target = node.func.value
                name = names.get(target.id if isinstance(target, ast.Name) else target.attr)
                if name is not None:
                    declared = DECLARED[name]._labelnames
                    positional = set(declared[: len(node.args)])
                    if len(node.args) > len(declared):
                        positional.add(f"<{len(node.args)} positional labels>")
                    found.append((path, node.lineno, name, positional | {k.arg or "**" for k in node.keywords}))
                    labelled.add(id(target))
        for node in ast.walk(tree):
            local = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
            if local in names and id(node) not in labelled:
                found.append((path, getattr(node, "lineno", 0), names[local], None))
    return found


def test_every_used_metric_is_declared_with_the_labels_used() -> None:
    problems = []
    for path, line, name, labels in _uses():
        if name not in DECLARED:
            problems.append(f"{path}:{line}: {name} is not declared in k2.metrics")
            continue
        declared = set(DECLARED[name]._labelnames)
        if labels is not None and labels != declared:
            problems.append(f"{path}:{line}: {name} used with labels {sorted(labels)}, declared {sorted(declared)}")
    assert problems == []


def test_every_declared_metric_is_used() -> None:
    used = {name for _, _, name, _ in _uses()}
    assert sorted(set(DECLARED) - used) == []


def test_metric_names_follow_the_conventions() -> None:
    for name, metric in DECLARED.items():
        full = metric._name
        assert full.startswith("k2_"), name
        if metric._type != "counter":  # counters always expose <name>_total
            assert full.endswith(
                ("_seconds", "_bytes", "_rows", "_connected", "_files", "_partitions", "_snapshots")
            ), full
        assert "trade_id" not in metric._labelnames and "message_id" not in metric._labelnames


def test_the_checker_sees_aliases_and_positional_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The walker itself: an aliased metric with a wrong positional label count is reported."""
    (tmp_path / "mod.py").write_text(
        "from k2.metrics import WS_CONNECTED as CONN, WS_RECONNECTS\n"
        "CONN.labels('binance', 'extra').set(1)\n"
        "WS_RECONNECTS.labels('binance', reason='error').inc()\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    uses = {(line, name, frozenset(labels or ())) for _, line, name, labels in _uses()}
    assert (2, "WS_CONNECTED", frozenset({"venue", "<2 positional labels>"})) in uses
    assert (3, "WS_RECONNECTS", frozenset({"venue", "reason"})) in uses
