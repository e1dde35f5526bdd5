"""Real services for distributed-mode tests. The fixtures live in ``fixtures.py`` beside this file and are
registered for the whole suite by ``tests/conftest.py`` (``pytest_plugins``), so any test can request them.

They are lazy and shared: a service starts the first time a test requests it (downloading it on the
very first run: Maven Central jars into ~/.m2 and ~/.cache/k2; PostgreSQL via apt-get if missing) and
stops at the end of the session. Everything listens on 127.0.0.1 on free ports.

- ``kafka`` -> ``KafkaService``: ``bootstrap_servers``, ``brokers`` (1), ``cluster`` (a KafkaCluster).
- ``kafka3`` -> ``KafkaService``: 3 KRaft nodes, replication factor 3, ``min.insync.replicas=2``;
  ``cluster.kill(node_id)`` (SIGKILL) and ``cluster.restart(node_id)``, ids 1..3. Any node a test
  leaves dead is restarted after that test.
- ``schema_registry`` -> ``RegistryService``: ``url``, Apicurio's ``.../apis/ccompat/v7``, for
  ``confluent_kafka.schema_registry.SchemaRegistryClient({"url": url})``.
- ``s3`` -> ``S3Service``: ``endpoint``, ``bucket`` (``k2-warehouse``), ``access_key``,
  ``secret_key``, ``region``; ``settings()`` -> ``k2.config.S3Settings``, ``warehouse_uri(prefix)``,
  ``filesystem()`` -> ``pyarrow.fs.S3FileSystem``.
- ``postgres`` -> ``PostgresService``: ``host``, ``port``, ``database``, ``user``, ``password``,
  ``sqlalchemy_url`` (``postgresql+psycopg://...``, for ``LakeSettings.catalog_uri``).

Use a unique topic, consumer group, bucket prefix and catalog namespace per test. Example::

    def test_roundtrip(kafka: KafkaService) -> None:
        producer = confluent_kafka.Producer({"bootstrap.servers": kafka.bootstrap_servers})
"""
