"""One local Spark for the whole test session (pyspark from PyPI, Iceberg's jars from Maven Central).

Started on first use and stopped at the end of the session; each test registers the catalog it
reads (``k2.lake.engines.spark_catalog_conf``) under a catalog name of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from k2.devservices.spark import spark_jars
from k2.lake.catalog import relax_s3_checksums


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """A SparkSession in local mode: one core, UTC session time zone, no UI, Iceberg extensions."""
    jars = spark_jars()  # downloaded into ~/.cache/k2 when missing
    relax_s3_checksums()  # the JVM inherits it: s3proxy rejects the AWS SDK's streaming checksums
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[1]")
        .appName("k2-tests")
        .config("spark.jars", ",".join(str(j) for j in jars))
        .config("spark.sql.extensions", "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.memory", "1g")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()
