"""Apache Kafka in KRaft mode, run from the ``org.apache.kafka`` jars on Maven Central with local Java.

One combined broker+controller by default; ``brokers=3`` gives three combined nodes with a static
controller quorum, replication factor 3 and ``min.insync.replicas=2``, and single nodes can be
SIGKILLed (:meth:`KafkaCluster.kill`) and restarted (:meth:`KafkaCluster.restart`) for fault tests.
"""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from k2.devservices.common import (
    HOST,
    ManagedProcess,
    cache_dir,
    free_port,
    java,
    maven_classpath,
    port_open,
    wait_until,
)
from k2.errors import DevServiceError
from k2.logging import get_logger

log = get_logger(__name__)

KAFKA_VERSION = "4.4.0"
SLF4J_VERSION = "2.0.17"
JVM_OPTS = ("-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true")


def kafka_classpath(version: str = KAFKA_VERSION) -> str:
    """The broker's classpath (``lib/*``), resolved once with Maven into ``~/.cache/k2/kafka-<version>``."""
    lib = maven_classpath(
        [
            f"org.apache.kafka:kafka_2.13:{version}",
            f"org.slf4j:slf4j-api:{SLF4J_VERSION}",
            f"org.slf4j:slf4j-simple:{SLF4J_VERSION}",
        ],
        cache_dir() / f"kafka-{version}",
    )
    return f"{lib}/*"


@dataclass
class KafkaNode:
    """One combined broker+controller process."""

    node_id: int
    port: int
    controller_port: int
    workdir: Path
    process: ManagedProcess | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"


class KafkaCluster:
    """``brokers`` KRaft nodes on 127.0.0.1 under ``workdir``; ports are picked free unless given."""

    def __init__(
        self,
        workdir: Path,
        *,
        brokers: int = 1,
        ports: list[int] | None = None,
        version: str = KAFKA_VERSION,
        die_with_parent: bool = True,
    ) -> None:
        if brokers not in (1, 3):
            raise DevServiceError("a dev Kafka cluster has 1 or 3 brokers")
        ports = ports or [free_port() for _ in range(2 * brokers)]
        self.workdir = workdir
        self.version = version
        self.die_with_parent = die_with_parent
        self.cluster_id = str(uuid.UUID(bytes=uuid.uuid4().bytes))
        self.nodes = [
            KafkaNode(i + 1, ports[2 * i], ports[2 * i + 1], workdir / f"node-{i + 1}") for i in range(brokers)
        ]
        self._classpath = ""

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"{HOST}:{n.port}" for n in self.nodes)

    @property
    def replication_factor(self) -> int:
        return len(self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise DevServiceError(f"no Kafka node {node_id} (nodes: {[n.node_id for n in self.nodes]})")

    def _properties(self, node: KafkaNode) -> str:
        n = len(self.nodes)
        voters = ",".join(f"{m.node_id}@{HOST}:{m.controller_port}" for m in self.nodes)
        lines = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "listeners": f"PLAINTEXT://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.quorum.voters": voters,
            "log.dirs": str(node.data_dir),
            "num.partitions": "1",
            "default.replication.factor": str(n),
            "min.insync.replicas": str(2 if n == 3 else 1),
            "offsets.topic.replication.factor": str(n),
            "transaction.state.log.replication.factor": str(n),
            "transaction.state.log.min.isr": str(2 if n == 3 else 1),
            "group.initial.rebalance.delay.ms": "0",
            "unclean.leader.election.enable": "false",
        }
        return "".join(f"{k}={v}\n" for k, v in lines.items())

    def start(self, timeout_s: float = 120.0) -> None:
        """Format storage (first start only), start every node, wait until all brokers are in the metadata."""
        self._classpath = kafka_classpath(self.version)
        for node in self.nodes:
            node.workdir.mkdir(parents=True, exist_ok=True)
            node.config_path.write_text(self._properties(node))
        self._format([n for n in self.nodes if not (n.data_dir / "meta.properties").exists()])
        for node in self.nodes:
            self._launch(node)
        self.wait_ready(timeout_s)

    def _format(self, nodes: list[KafkaNode]) -> None:
        """``kafka-storage format`` for each node, in parallel (one JVM each)."""
        running = []
        for node in nodes:
            cmd = [java(), "-cp", self._classpath, "kafka.tools.StorageTool", "format"]
            cmd += ["--cluster-id", self.cluster_id, "--config", str(node.config_path), "--ignore-formatted"]
            running.append((node, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))  # noqa: S603
        failures = []
        for node, proc in running:
            output, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                failures.append(f"node {node.node_id}:\n{output[-1500:]}")
        if failures:
            raise DevServiceError("kafka storage format failed for " + "\n".join(failures))

    def _launch(self, node: KafkaNode) -> None:
        cmd = [java(), *JVM_OPTS, "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-cp", self._classpath]
        node.process = ManagedProcess(
            f"kafka-{node.node_id}",
            [*cmd, "kafka.Kafka", str(node.config_path)],
            node.workdir / "kafka.log",
            die_with_parent=self.die_with_parent,
        )

    def wait_ready(self, timeout_s: float = 120.0, *, node_ids: list[int] | None = None) -> float:
        """Wait until the given (default: all) brokers are registered and serving metadata."""
        expected = set(node_ids or [n.node_id for n in self.nodes])

        def ready() -> bool:
            return expected <= self._registered_brokers()

        waited = 0.0
        for node in self.nodes:
            if node.node_id in expected:
                waited += wait_until(
                    lambda node=node: port_open(node.port),  # type: ignore[misc]
                    what=f"Kafka node {node.node_id} port {node.port}",
                    timeout_s=timeout_s,
                    process=node.process,
                )
        waited += wait_until(ready, what=f"Kafka brokers {sorted(expected)} in metadata", timeout_s=timeout_s)
        log.info("kafka_ready", bootstrap_servers=self.bootstrap_servers, waited_s=round(waited, 2))
        return waited

    def _registered_brokers(self) -> set[int]:
        from confluent_kafka.admin import AdminClient

        alive = [f"{HOST}:{n.port}" for n in self.nodes if n.process is not None and n.process.alive]
        if not alive:
            return set()
        admin = AdminClient({"bootstrap.servers": ",".join(alive), "log_level": 0})
        try:
            metadata = admin.list_topics(timeout=2)
        except Exception:  # KafkaException while the broker is still starting
            return set()
        return set(metadata.brokers)

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (no clean shutdown), as a crash would."""
        node = self.node(node_id)
        if node.process is None or not node.process.alive:
            raise DevServiceError(f"Kafka node {node_id} is not running")
        node.process.kill()
        log.info("kafka_node_killed", node_id=node_id)

    def restart(self, node_id: int, timeout_s: float = 120.0) -> None:
        """Start a stopped or killed node again and wait until it is back in the metadata."""
        node = self.node(node_id)
        if node.process is not None and node.process.alive:
            raise DevServiceError(f"Kafka node {node_id} is already running")
        self._launch(node)
        self.wait_ready(timeout_s, node_ids=[node_id])

    def stop(self) -> None:
        """Clean shutdown of every node (SIGTERM, then SIGKILL after 30 s)."""
        running = [n.process for n in self.nodes if n.process is not None]
        for process in running:  # all at once: a lone last controller would wait for a lost quorum
            process.terminate()
        for process in running:
            process.stop(timeout_s=30.0)
