"""deploy/ is consistent with the code: the compose stack references files that exist and settings
K2 has; dashboards and alerts use only metrics declared in k2.metrics; real promtool accepts the
Prometheus config and rules, and the rule unit tests fire every alert and keep healthy series silent."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from k2.config import K2Settings
from tests.observability import (
    ALERTS,
    BUILTIN_SERIES,
    DASHBOARDS,
    DEPLOY,
    OPERATIONS_DOC,
    ROOT,
    dashboard_exprs,
    dashboard_panels,
    declared_series,
    k2_names,
    prometheus_bin_dir,
    selected_names,
)

COMPOSE = DEPLOY / "docker-compose.yml"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "alerts_test.yml"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _yaml(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    tool = prometheus_bin_dir() / "promtool"
    return subprocess.run([str(tool), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


# --- docker compose ------------------------------------------------------------------------------
def test_compose_has_the_distributed_stack() -> None:
    services = _yaml(COMPOSE)["services"]
    assert set(services) == {
        "kafka-1",
        "kafka-2",
        "kafka-3",
        "schema-registry",
        "minio",
        "minio-init",
        "postgres",
        "k2-emulator",
        "k2-ingest",
        "k2-consume",
        "prometheus",
        "grafana",
    }
    voters = {services[f"kafka-{i}"]["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"] for i in (1, 2, 3)}
    assert voters == {"1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"}
    assert [services[f"kafka-{i}"]["environment"]["KAFKA_NODE_ID"] for i in (1, 2, 3)] == [1, 2, 3]
    assert services["k2-ingest"]["command"] == ["ingest"]
    assert services["k2-consume"]["command"] == ["consume"]


def test_compose_references_only_files_that_exist() -> None:
    compose = _yaml(COMPOSE)
    missing = []
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            if not (context / build["dockerfile"]).is_file():
                missing.append(f"{name}: {build['dockerfile']}")
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                if not (DEPLOY / source).exists():
                    missing.append(f"{name}: {source}")
            else:
                assert source in compose["volumes"], f"{name}: undeclared named volume {source}"
    assert missing == []


def test_compose_k2_environment_names_real_settings() -> None:
    """Every K2_* variable the stack sets is a field of K2Settings (a typo would be silently ignored)."""
    compose = _yaml(COMPOSE)
    seen = set()
    for service in compose["services"].values():
        for key in service.get("environment", {}):
            if key.startswith("K2_") and not key.endswith("_PASSWORD"):
                section, _, field = key.removeprefix("K2_").lower().partition("__")
                assert field in type(getattr(K2Settings(), section)).model_fields, key
                seen.add(key)
    assert "K2_METRICS__PORT" in seen and "K2_KAFKA__BOOTSTRAP_SERVERS" in seen


def test_dockerfile_copies_existing_paths_and_installs_existing_extras() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (?!--from)(.+) \S+$", text, flags=re.MULTILINE):
        for source in line.split():
            assert (ROOT / source).exists(), source
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in re.findall(r'"\.\[([a-z0-9_,-]+)\]"', text):
        for name in extra.split(","):
            assert name in extras, f"Dockerfile installs .[{name}], which pyproject.toml does not define"


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    datasource = _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]
    provider = _yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "k2.yml")["providers"][0]
    grafana = _yaml(COMPOSE)["services"]["grafana"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    assert datasource["url"] == "http://prometheus:9090"
    for _, title, panel in dashboard_panels():
        assert panel["datasource"]["uid"] == datasource["uid"], title


# --- dashboards ------------------------------------------------------------------------------------
def test_dashboards_are_valid_and_use_only_declared_metrics() -> None:
    assert [p.name for p in DASHBOARDS] == ["k2-pipeline-overview.json"]
    declared = declared_series()
    problems = []
    for title, expr in dashboard_exprs():
        for name in k2_names(expr) - set(declared):
            problems.append(f"{title}: {name} is not declared in k2.metrics")
        for name in selected_names(expr) - set(declared) - BUILTIN_SERIES:
            problems.append(f"{title}: unknown series {name}")
    assert problems == []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        assert dashboard["uid"] == path.stem


def test_dashboard_json_is_what_the_builder_writes() -> None:
    """deploy/grafana/build_dashboard.py is the source; regenerate the JSON after editing it."""
    spec = importlib.util.spec_from_file_location("build_dashboard", DEPLOY / "grafana" / "build_dashboard.py")
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    assert builder.OUT.read_text() == builder.render(), "run: python deploy/grafana/build_dashboard.py"


def test_dashboard_covers_the_pipeline_overview() -> None:
    used = {name for _, expr in dashboard_exprs() for name in k2_names(expr)}
    for needed in (
        "k2_ws_connected",
        "k2_ws_messages_received_total",
        "k2_last_event_timestamp_seconds",
        "k2_records_normalized_total",
        "k2_lake_rows_written_total",
        "k2_lake_commit_duration_seconds_bucket",
        "k2_lake_last_commit_timestamp_seconds",
        "k2_messages_rejected_total",
        "k2_lake_commit_conflicts_total",
    ):
        assert needed in used, needed


# --- alerts ------------------------------------------------------------------------------------------
def test_alerts_use_only_declared_metrics_and_link_their_runbook() -> None:
    declared = declared_series()
    doc = OPERATIONS_DOC.read_text()
    headings = {h.strip().lower() for h in re.findall(r"^### (K2\w+)\s*$", doc, flags=re.MULTILINE)}
    for rule in _alert_rules():
        name = rule["alert"]
        assert k2_names(rule["expr"]) <= set(declared), name
        assert selected_names(rule["expr"]) <= set(declared) | BUILTIN_SERIES, name
        assert rule["annotations"]["runbook_url"] == f"docs/operations.md#{name.lower()}", name
        assert name.lower() in headings, f"docs/operations.md has no '### {name}' runbook section"
        assert rule["labels"]["severity"] in ("critical", "warning"), name


def test_every_alert_has_a_firing_and_a_silent_rule_test() -> None:
    cases: dict[str, list[bool]] = {}
    for test in _yaml(RULE_TESTS)["tests"]:
        for case in test["alert_rule_test"]:
            cases.setdefault(case["alertname"], []).append(bool(case["exp_alerts"]))
    for rule in _alert_rules():
        assert set(cases.get(rule["alert"], [])) == {True, False}, rule["alert"]


# --- real promtool ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "where"),
    [
        (("check", "config", "prometheus.yml"), DEPLOY / "prometheus"),
        (("check", "rules", "alerts.yml"), DEPLOY / "prometheus"),
        (("test", "rules", "alerts_test.yml"), DEPLOY / "prometheus" / "tests"),
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool_accepts(args: tuple[str, ...], where: Path) -> None:
    done = _promtool(*args, cwd=where)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_promtool_rule_tests_can_fail(tmp_path: Path) -> None:
    """The rule tests are not vacuous: a wrong expectation makes promtool fail."""
    broken = RULE_TESTS.read_text().replace('summary: "binance feed disconnected', 'summary: "WRONG feed disconnected')
    assert broken != RULE_TESTS.read_text()
    (tmp_path / "tests").mkdir()
    (tmp_path / "alerts.yml").write_text(ALERTS.read_text())
    (tmp_path / "tests" / "alerts_test.yml").write_text(broken)
    done = _promtool("test", "rules", "alerts_test.yml", cwd=tmp_path / "tests")
    assert done.returncode == 1
    assert "K2FeedDown" in done.stdout + done.stderr
