"""Every metric the code uses is declared in k2.metrics with exactly the labels it is used with,
and every declared metric is used somewhere (the prototype shipped five metric/label mismatches)."""

from __future__ import annotations

import ast
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

import k2.metrics as metrics

SRC = Path(metrics.__file__).parent
DECLARED: dict[str, MetricWrapperBase] = {
    name: obj for name, obj in vars(metrics).items() if isinstance(obj, MetricWrapperBase)
}


def _uses() -> list[tuple[Path, int, str, set[str] | None]]:
    """(file, line, metric constant, label names used or None when used without .labels)."""
    found = []
    for path in SRC.rglob("*.py"):
        if path.name == "metrics.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        labelled: set[int] = set()
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "labels"
                and isinstance(node.func.value, ast.Name | ast.Attribute)
            ):
                target = node.func.value
                name = target.id if isinstance(target, ast.Name) else target.attr
                if name in DECLARED:
                    assert not node.args, f"{path}:{node.lineno}: use keyword labels for {name}"
                    found.append((path, node.lineno, name, {k.arg for k in node.keywords if k.arg}))
                    labelled.add(id(target))
        for node in ast.walk(tree):
            name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
            if name in DECLARED and id(node) not in labelled:
                found.append((path, getattr(node, "lineno", 0), name, None))
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
            assert full.endswith(("_seconds", "_bytes", "_rows", "_connected")), full
        assert "trade_id" not in metric._labelnames and "message_id" not in metric._labelnames
