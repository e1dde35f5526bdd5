"""Real services for distributed-mode tests. The fixtures live in ``fixtures.py`` beside this file and are
registered for the whole suite by ``tests/conftest.py`` (``pytest_plugins``), so any test can request them.

All are session-scoped and lazy: a service starts the first time a test requests it (downloading it on
the very first run: Maven Central jars into ~/.m2 and ~/.cache/k2; PostgreSQL via apt-get if missing)
and stops at the end of the session. Everything listens on 127.0.0.1 on free ports.

=================  ==================  ==========================================================
fixture            returns             fields
=================  ==================  ==========================================================
``kafka``          ``KafkaService``    ``bootstrap_servers``; ``cluster`` (1 KRaft node, RF 1)
``kafka3``         ``KafkaService``    3 nodes, RF 3, min.insync.replicas=2; ``cluster.kill(id)``
                                       and ``cluster.restart(id)`` (ids 1..3; restart what you kill)
``schema_registry````RegistryService`` ``url``: Apicurio ``.../apis/ccompat/v7`` for
                                       ``SchemaRegistryClient({"url": url})``
``s3``             ``S3Service``       ``endpoint``, ``bucket`` (k2-warehouse), ``access_key``,
                                       ``secret_key``, ``region``; ``settings()`` -> S3Settings,
                                       ``warehouse_uri(prefix)``, ``filesystem()`` (pyarrow)
``postgres``       ``PostgresService`` ``host``, ``port``, ``database``, ``user``, ``password``,
                                       ``sqlalchemy_url`` (postgresql+psycopg://...)
=================  ==================  ==========================================================

Use a unique topic / consumer group / table namespace per test: the services are shared by the session.
Usage::

    def test_roundtrip(kafka: KafkaService) -> None:
        producer = confluent_kafka.Producer({"bootstrap.servers": kafka.bootstrap_servers})
"""
