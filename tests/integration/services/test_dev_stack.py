"""``k2 dev``: a detached DevStack is seen by status/env, restarted service by service with its data, and
stopped by down, from another "process" (the CLI)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from typer.testing import CliRunner

from k2.cli import app
from k2.devservices.common import free_port, port_open
from k2.devservices.stack import WAREHOUSE_BUCKET, DevPorts, DevStack
from tests.conftest import eventually

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


def _ports() -> DevPorts:
    return DevPorts(
        kafka=free_port(), kafka_controller=free_port(), registry=free_port(), s3=free_port(), postgres=free_port()
    )


def _status(root: Path) -> tuple[int, dict[str, str]]:
    """`k2 dev status`: exit code, and each service's line after its name."""
    result = runner.invoke(app, ["dev", "status", "--root", str(root)])
    return result.exit_code, {line.split()[0]: line.split(None, 1)[1] for line in result.output.splitlines()}


# `k2 dev restart` run in-process (CliRunner) leaves the services it starts running, detached, as it must;
# Python warns about a child it did not wait for when the command's objects are freed.
@pytest.mark.filterwarnings(r"ignore:subprocess \d+ is still running:ResourceWarning")
def test_restart_keeps_each_services_data_and_status_tells_the_truth(tmp_path: Path) -> None:
    """Every service gets data, then is restarted with `k2 dev restart` and still has it. The broker is
    first killed and started again by hand (same command, another pid): `k2 dev status` reports it up,
    as restarted outside `k2 dev`, and `k2 dev restart kafka` replaces that process too."""
    root = tmp_path / "stack"
    ports = _ports()
    stack = DevStack(root=root, services=("kafka", "registry", "s3", "postgres"), ports=ports, detach=True)
    stack.up()
    by_hand: subprocess.Popen[bytes] | None = None
    bootstrap = stack.kafka.bootstrap_servers
    try:
        assert _status(root)[0] == 0
        # Data in each service.
        topic = "kept"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
        producer = Producer({"bootstrap.servers": bootstrap})
        for value in (b"a", b"b", b"c"):
            producer.produce(topic, value)
        assert producer.flush(30) == 0
        with SchemaRegistryClient({"url": stack.registry.url}) as registry:
            schema_id = registry.register_schema("kept-value", Schema('"string"', "AVRO"))
        s3fs = stack.s3.filesystem()
        with s3fs.open_output_stream(f"{WAREHOUSE_BUCKET}/kept.txt") as out:
            out.write(b"kept")
        catalog_url = stack.env()["K2_LAKE__CATALOG_URI"]
        with psycopg.connect(_conninfo(catalog_url), autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('row')")

        # The broker is killed and started again by hand: another pid, the same service.
        node = stack.kafka.nodes[0]
        assert node.process is not None
        cmdline = Path(f"/proc/{node.process.pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        node.process.kill()
        code, lines = _status(root)
        assert code == 1 and lines["kafka"].startswith("down")
        by_hand = subprocess.Popen(
            [c.decode() for c in cmdline], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        eventually(lambda: port_open(ports.kafka), timeout=120, interval=0.2)
        code, lines = _status(root)
        assert code == 0, lines
        assert lines["kafka"] == f"up    {bootstrap}  (pid {by_hand.pid}, restarted outside `k2 dev`)"

        for service in ("kafka", "registry", "s3", "postgres"):
            restarted = runner.invoke(app, ["dev", "restart", service, "--root", str(root)])
            assert restarted.exit_code == 0, restarted.output
            assert restarted.output.startswith(f"{service:<9} up in ")
        assert by_hand.wait(timeout=60) is not None  # `restart kafka` stopped the process started by hand
        code, lines = _status(root)
        assert code == 0 and all("  (" not in line for line in lines.values()), lines  # the recorded processes

        # Every service still has its data.
        assert [v for _, v in _consume(bootstrap, topic, 3)] == [b"a", b"b", b"c"]
        with SchemaRegistryClient({"url": stack.registry.url}) as registry:
            assert registry.get_schema(schema_id).schema_str == '"string"'
        with stack.s3.filesystem().open_input_stream(f"{WAREHOUSE_BUCKET}/kept.txt") as src:
            assert src.read() == b"kept"
        with psycopg.connect(_conninfo(catalog_url)) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [("row",)]
    finally:
        down = runner.invoke(app, ["dev", "down", "--root", str(root)])
        if by_hand is not None and by_hand.poll() is None:
            by_hand.kill()
            by_hand.wait()
        stack.down()  # reaps this process's own (already stopped) children
    assert down.exit_code == 0, down.output
    assert not any(port_open(p) for p in (ports.kafka, ports.registry, ports.s3, ports.postgres))
    assert not root.exists()


def test_up_while_a_stack_is_recorded_points_at_restart(tmp_path: Path) -> None:
    root = tmp_path / "stack"
    root.mkdir()
    (root / "state.json").write_text("{}")
    result = runner.invoke(app, ["dev", "up", "--services", "kafka", "--root", str(root)])
    assert result.exit_code == 1
    assert "`k2 dev restart SERVICE` restarts one of its services with its data" in result.output


def _conninfo(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://")


def _consume(bootstrap: str, topic: str, count: int) -> list[tuple[int, bytes]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "kept", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got: list[tuple[int, bytes]] = []
    try:
        for _ in range(300):
            for msg in consumer.consume(count, 0.2):
                if msg.error() is None:
                    got.append((msg.offset(), msg.value()))
            if len(got) >= count:
                break
    finally:
        consumer.close()
    return got
