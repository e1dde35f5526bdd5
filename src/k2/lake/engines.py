"""Other engines on K2's tables: the Spark (and Trino) configuration that reads K2's catalog unchanged.

K2's catalog is Iceberg's SQL catalog, the same tables Iceberg's Java ``JdbcCatalog`` reads
(``iceberg_tables``, ``iceberg_namespace_properties``), so any engine with Iceberg support reads
K2's tables through JDBC: SQLite in embedded mode, PostgreSQL in distributed mode, with the table
files on the local disk or on S3. The Java catalog scopes its rows by the catalog's *name*: the
engine's catalog must be named like K2's (``lake.catalog_name``, ``k2`` by default).
docs/lake.md, "Reading K2's tables with Spark or Trino", shows the result for both modes.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url

from k2.config import LakeSettings
from k2.errors import ConfigError


def jdbc_catalog(lake: LakeSettings) -> tuple[str, dict[str, str]]:
    """The JDBC URL of K2's catalog database and the JDBC properties (user, password) to log in."""
    url = make_url(lake.resolved_catalog_uri)
    backend = url.get_backend_name()
    if backend == "sqlite":
        path = Path(url.database or "")
        if not url.database or not path.is_absolute():
            raise ConfigError(f"the SQLite catalog needs an absolute path, not {url.database!r}")
        return f"jdbc:sqlite:{path}", {}
    if backend == "postgresql":
        port = f":{url.port}" if url.port else ""
        props = {"user": url.username or ""}
        if url.password is not None:
            props["password"] = str(url.password)
        return f"jdbc:postgresql://{url.host}{port}/{url.database}", props
    raise ConfigError(f"no JDBC mapping for a {backend!r} catalog: K2 supports SQLite and PostgreSQL")


def warehouse_uri(lake: LakeSettings) -> str:
    """The warehouse location as K2's catalog was opened with it (see :func:`k2.lake.catalog.open_catalog`)."""
    if lake.warehouse_uri:
        return lake.warehouse_uri
    return str(lake.warehouse) if "://" in str(lake.warehouse) else lake.warehouse.resolve().as_uri()


def spark_catalog_conf(lake: LakeSettings) -> dict[str, str]:
    """``spark.sql.catalog.<lake.catalog_name>.*`` settings that make Spark read K2's tables.

    Needs ``iceberg-spark-runtime`` and the catalog's JDBC driver on Spark's classpath, plus
    ``iceberg-aws-bundle`` for an ``s3://`` warehouse. Holds the catalog and S3 secrets: pass it to
    Spark, do not log it.
    """
    prefix = f"spark.sql.catalog.{lake.catalog_name}"
    uri, jdbc = jdbc_catalog(lake)
    conf = {
        prefix: "org.apache.iceberg.spark.SparkCatalog",
        f"{prefix}.type": "jdbc",
        f"{prefix}.uri": uri,
        f"{prefix}.warehouse": warehouse_uri(lake),
        # K2 created the catalog tables; the engine must not try to create or migrate them.
        f"{prefix}.jdbc.init-catalog-tables": "false",
    }
    conf.update({f"{prefix}.jdbc.{k}": v for k, v in jdbc.items()})
    if warehouse_uri(lake).startswith(("s3://", "s3a://")):
        s3 = lake.s3
        conf[f"{prefix}.io-impl"] = "org.apache.iceberg.aws.s3.S3FileIO"
        conf[f"{prefix}.client.region"] = s3.region
        conf[f"{prefix}.s3.path-style-access"] = str(s3.path_style).lower()
        if s3.endpoint:
            conf[f"{prefix}.s3.endpoint"] = s3.endpoint
        if s3.access_key_id is not None:
            conf[f"{prefix}.s3.access-key-id"] = s3.access_key_id.get_secret_value()
        if s3.secret_access_key is not None:
            conf[f"{prefix}.s3.secret-access-key"] = s3.secret_access_key.get_secret_value()
    return conf
