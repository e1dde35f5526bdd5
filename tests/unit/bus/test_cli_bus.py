"""`k2 ingest` and `k2 consume` are registered, document their options, and report bad settings cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from k2.cli import app


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("ingest", ["--bootstrap-servers", "--schema-registry", "--symbols", "--ws-url", "--duration"]),
        (
            "consume",
            ["--bootstrap-servers", "--schema-registry", "--group", "--topic", "--idle-exit", "--max-messages"],
        ),
    ],
)
def test_commands_are_registered_with_their_options(command: str, options: list[str]) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for option in options:
        assert option in result.output


def test_invalid_kafka_settings_exit_1_with_one_line(tmp_path: Path) -> None:
    env = {"K2_CONFIG_FILE": str(tmp_path / "none.toml"), "K2_KAFKA__COMPRESSION": "brotli"}
    result = CliRunner().invoke(app, ["consume", "--warehouse", str(tmp_path)], env=env)
    assert result.exit_code == 1
    assert "unknown compression 'brotli'" in result.output
