"""Shared by the deploy/observability tests: where deploy/ is, the PromQL it uses, the metric names
declared in k2.metrics, and the real Prometheus binaries (fetched once by deploy/scripts)."""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

import k2.metrics

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"

# Series that Prometheus itself produces, allowed in dashboards and alerts besides k2_* names.
BUILTIN_SERIES = frozenset({"up"})

_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}


def declared_series() -> dict[str, str]:
    """Every sample name the registry can expose -> the metric constant that declares it."""
    out = {}
    for const, obj in vars(k2.metrics).items():
        if isinstance(obj, MetricWrapperBase):
            for suffix in _SUFFIXES[obj._type]:
                out[obj._name + suffix] = const
    return out


def k2_names(expr: str) -> set[str]:
    return set(re.findall(r"\bk2_[a-z0-9_]+\b", expr))


def selected_names(expr: str) -> set[str]:
    """Metric names used as selectors (``name{`` or ``name[``), k2_* or not."""
    return set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", expr)) - {"by", "without", "on", "ignoring"}


def dashboard_panels() -> list[tuple[str, str, dict[str, Any]]]:
    """(dashboard file, panel title, panel) for every panel with queries."""
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            if panel.get("targets"):
                out.append((path.name, panel["title"], panel))
    return out


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every dashboard."""
    return [(title, t["expr"]) for _, title, panel in dashboard_panels() for t in panel["targets"]]


@cache
def prometheus_bin_dir() -> Path:
    """The directory holding ``prometheus`` and ``promtool`` (Debian's package, unpacked under ~/.cache/k2)."""
    script = DEPLOY / "scripts" / "fetch-prometheus.sh"
    try:
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True, timeout=300)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"cannot fetch Prometheus with {script}: {getattr(exc, 'stderr', exc)}")
    return Path(done.stdout.strip().splitlines()[-1])
