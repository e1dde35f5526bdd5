"""docs/operations.md lists exactly the metrics declared in k2.metrics (regenerate: `k2 metrics-doc`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from k2.cli import app
from k2.errors import ConfigError
from k2.services.metrics_doc import BEGIN, END, declared_metrics, exposed_name, update_operations_doc
from tests.observability import OPERATIONS_DOC


def test_operations_doc_is_up_to_date_with_the_registry() -> None:
    assert update_operations_doc(OPERATIONS_DOC, check=True) is False
    block = OPERATIONS_DOC.read_text().split(BEGIN)[1].split(END)[0]
    listed = re.findall(r"^\| `(k2_\w+)` \|", block, flags=re.MULTILINE)
    assert listed == [exposed_name(m) for m in declared_metrics()]
    assert "| `k2_ws_reconnects_total` | counter | `venue`, `reason` |" in block


def test_drift_is_detected_and_fixed(tmp_path: Path) -> None:
    doc = tmp_path / "operations.md"
    doc.write_text(f"# Ops\n\n{BEGIN}\n| stale |\n{END}\n\nafter\n")
    with pytest.raises(ConfigError, match="out of date"):
        update_operations_doc(doc, check=True)
    result = CliRunner().invoke(app, ["metrics-doc", "--path", str(doc)])
    assert result.exit_code == 0 and "updated" in result.output
    text = doc.read_text()
    assert text.startswith(f"# Ops\n\n{BEGIN}\n| metric | type | labels | meaning |\n")
    assert text.endswith(f"{END}\n\nafter\n") and "| stale |" not in text
    assert CliRunner().invoke(app, ["metrics-doc", "--path", str(doc), "--check"]).exit_code == 0


def test_a_doc_without_the_markers_is_a_config_error(tmp_path: Path) -> None:
    doc = tmp_path / "operations.md"
    doc.write_text("# Ops\n")
    result = CliRunner().invoke(app, ["metrics-doc", "--path", str(doc)])
    assert result.exit_code == 1 and "no generated metrics block" in result.output
