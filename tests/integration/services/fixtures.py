"""Session-scoped real services for integration tests (registered in tests/conftest.py; see conftest.py here).

Each fixture starts its service the first time a test asks for it and stops it at the end of the
session. Services come from ``k2.devservices`` (Maven Central jars cached in ~/.m2 and ~/.cache/k2,
PostgreSQL from Debian's packages, installed with apt-get when missing and running as root).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pydantic import SecretStr

from k2.config import LakeSettings, S3Settings
from k2.devservices.kafka import KafkaCluster
from k2.devservices.postgres import PostgresServer
from k2.devservices.registry import ApicurioRegistry
from k2.devservices.s3 import REGION, S3Proxy
from k2.lake.catalog import load_or_create_table, open_catalog, table_identifier
from k2.lake.writer import TableWriter
from k2.schema.kinds import RecordKind


@dataclass(frozen=True)
class KafkaService:
    """``bootstrap_servers`` for clients; ``cluster`` for fault tests (``kill(node_id)``, ``restart(node_id)``)."""

    bootstrap_servers: str
    cluster: KafkaCluster = field(repr=False)

    @property
    def brokers(self) -> int:
        return len(self.cluster.nodes)


@dataclass(frozen=True)
class RegistryService:
    """``url``: Apicurio's Confluent-compatible base URL, for confluent-kafka's SchemaRegistryClient."""

    url: str


@dataclass(frozen=True)
class S3Service:
    """An s3proxy endpoint with one bucket; path-style addressing, region us-east-1."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str = field(repr=False)
    proxy: S3Proxy = field(repr=False)
    region: str = REGION

    def settings(self) -> S3Settings:
        return S3Settings(
            endpoint=self.endpoint,
            region=self.region,
            access_key_id=SecretStr(self.access_key),
            secret_access_key=SecretStr(self.secret_key),
        )

    def warehouse_uri(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def filesystem(self) -> Any:
        """A ``pyarrow.fs.S3FileSystem`` for this endpoint."""
        return self.proxy.filesystem()


@dataclass(frozen=True)
class PostgresService:
    """A PostgreSQL database owned by ``user``; ``sqlalchemy_url`` uses the psycopg (v3) driver."""

    host: str
    port: int
    database: str
    user: str
    password: str = field(repr=False)
    sqlalchemy_url: str = field(repr=False)


def distributed_lake(
    s3: S3Service, postgres: PostgresService, local: Path, namespace: str, **settings: Any
) -> LakeSettings:
    """Lake settings of distributed mode: the catalog in PostgreSQL, the tables under ``s3://<bucket>/wh-<namespace>``
    (``local``: the local directory the quarantine stays in)."""
    return LakeSettings(
        warehouse=local,
        warehouse_uri=s3.warehouse_uri(f"wh-{namespace}"),
        catalog_uri=postgres.sqlalchemy_url,
        s3=s3.settings(),
        namespace=namespace,
        **settings,
    )


def write_commits(lake: LakeSettings, kind: RecordKind, rows: pa.Table, splits: tuple[int, ...] = ()) -> None:
    """``rows`` into ``kind``'s table through K2's writer (TableWriter), one commit per slice between ``splits``."""
    catalog = open_catalog(lake)
    try:
        load_or_create_table(catalog, lake, kind)
        writer = TableWriter(catalog, table_identifier(lake, kind), lake)
        bounds = (0, *splits, rows.num_rows)
        for start, end in itertools.pairwise(bounds):
            writer.append(rows.slice(start, end - start))
    finally:
        engine = getattr(catalog, "engine", None)  # the SQL catalog's connection pool
        if engine is not None:
            engine.dispose()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaService]:
    """One KRaft broker (combined broker+controller), replication factor 1."""
    cluster = KafkaCluster(tmp_path_factory.mktemp("kafka"), brokers=1)
    try:
        cluster.start()
        yield KafkaService(cluster.bootstrap_servers, cluster)
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def _kafka3_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaService]:
    cluster = KafkaCluster(tmp_path_factory.mktemp("kafka3"), brokers=3)
    try:
        cluster.start()
        yield KafkaService(cluster.bootstrap_servers, cluster)
    finally:
        cluster.stop()


@pytest.fixture
def kafka3(_kafka3_session: KafkaService) -> Iterator[KafkaService]:
    """Three KRaft nodes (one cluster per session), replication factor 3, min.insync.replicas=2.

    A test may ``cluster.kill(node_id)``; any node left dead is restarted after the test.
    """
    yield _kafka3_session
    for node in _kafka3_session.cluster.nodes:
        if node.process is None or not node.process.alive:
            _kafka3_session.cluster.restart(node.node_id)


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryService]:
    """Apicurio Registry 3 with in-memory storage."""
    registry = ApicurioRegistry(tmp_path_factory.mktemp("registry"))
    try:
        registry.start()
        yield RegistryService(registry.url)
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Service]:
    """s3proxy (filesystem backend) with the bucket ``k2-warehouse``; checksum env relaxed in-process."""
    proxy = S3Proxy(tmp_path_factory.mktemp("s3"), buckets=("k2-warehouse",))
    try:
        proxy.start()
        creds = proxy.credentials
        yield S3Service(proxy.endpoint, "k2-warehouse", creds.access_key, creds.secret_key, proxy)
    finally:
        proxy.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresService]:
    """PostgreSQL on 127.0.0.1 with database ``k2`` owned by role ``k2``."""
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    try:
        server.start()
        c = server.credentials
        yield PostgresService("127.0.0.1", server.port, c.database, c.user, c.password, server.sqlalchemy_url)
    finally:
        server.stop()
