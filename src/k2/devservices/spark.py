"""The jars Apache Spark (pyspark from PyPI) needs to read K2's catalog, from Maven Central.

Iceberg's Spark runtime for the installed Spark line, Iceberg's AWS bundle (``S3FileIO``) and the
JDBC drivers of K2's SQL catalog: SQLite (embedded mode) and PostgreSQL (distributed mode).
Downloaded with Maven like the other dev services and cached under ``~/.cache/k2/spark-…``
(re-fetched whenever missing). ``k2 dev fetch`` fetches them; the Spark tests use them.
"""

from __future__ import annotations

from pathlib import Path

from k2.devservices.common import cache_dir, maven_artifact

SPARK_LINE = "4.1"  # pyspark's minor version: the Iceberg runtime is built per Spark minor
SCALA = "2.13"
ICEBERG_VERSION = "1.12.0"
SPARK_JARS = (
    f"org.apache.iceberg:iceberg-spark-runtime-{SPARK_LINE}_{SCALA}:{ICEBERG_VERSION}",
    f"org.apache.iceberg:iceberg-aws-bundle:{ICEBERG_VERSION}",
    "org.xerial:sqlite-jdbc:3.54.1.0",
    "org.postgresql:postgresql:42.7.14",
)


def spark_jars() -> list[Path]:
    """The jars of :data:`SPARK_JARS`, downloaded when missing; pass them as ``spark.jars``."""
    dest = cache_dir() / f"spark-{SPARK_LINE}-iceberg-{ICEBERG_VERSION}"
    return [maven_artifact(coords, dest) for coords in SPARK_JARS]
