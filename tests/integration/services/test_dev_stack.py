"""``k2 dev``: a detached DevStack is seen by status/env and stopped by down from another "process" (the CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from k2.cli import app
from k2.devservices.common import free_port, port_open
from k2.devservices.stack import DevPorts, DevStack

pytestmark = [pytest.mark.integration, pytest.mark.services]

runner = CliRunner()


def test_up_status_env_down(tmp_path: Path) -> None:
    root = tmp_path / "stack"
    ports = DevPorts(
        kafka=free_port(), kafka_controller=free_port(), registry=free_port(), s3=free_port(), postgres=free_port()
    )
    stack = DevStack(root=root, services=("s3", "postgres"), ports=ports, detach=True)
    timings = stack.up()
    try:
        assert set(timings) == {"s3", "postgres"}
        status = runner.invoke(app, ["dev", "status", "--root", str(root)])
        assert status.exit_code == 0, status.output
        assert status.output.splitlines() == [
            f"s3        up    http://127.0.0.1:{ports.s3} (bucket k2-warehouse, region us-east-1)",
            f"postgres  up    127.0.0.1:{ports.postgres}/k2",
        ]
        env = runner.invoke(app, ["dev", "env", "--root", str(root)])
        assert env.exit_code == 0
        secret = stack.s3.credentials.secret_key
        assert env.output.splitlines() == [
            "export K2_LAKE__WAREHOUSE_URI=s3://k2-warehouse/warehouse",
            f"export K2_LAKE__S3__ENDPOINT=http://127.0.0.1:{ports.s3}",
            "export K2_LAKE__S3__REGION=us-east-1",
            "export K2_LAKE__S3__ACCESS_KEY_ID=k2-dev-access",
            f"export K2_LAKE__S3__SECRET_ACCESS_KEY={secret}",
            f"export K2_LAKE__CATALOG_URI={stack.postgres.sqlalchemy_url}",
        ]
        assert secret not in status.output
        assert (root / "state.json").stat().st_mode & 0o777 == 0o600
    finally:
        down = runner.invoke(app, ["dev", "down", "--root", str(root)])
    assert down.exit_code == 0, down.output
    assert down.output.strip() == "dev stack stopped"
    assert not port_open(ports.s3)
    assert not port_open(ports.postgres)
    assert not root.exists()
    after = runner.invoke(app, ["dev", "status", "--root", str(root)])
    assert after.exit_code == 1
    assert "no dev stack recorded" in after.output
    stack.down()  # reaps this process's own (already stopped) children and closes their log files


def test_unknown_service_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["dev", "up", "--services", "kafka,zookeeper", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert "unknown service(s) ['zookeeper']" in result.output
