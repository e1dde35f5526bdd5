"""The settings other engines need to read K2's catalog, and `k2 maintain` on the command line."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import SecretStr
from pyiceberg.catalog import Catalog
from typer.testing import CliRunner

from k2.cli import app
from k2.config import LakeSettings, S3Settings
from k2.errors import ConfigError
from k2.lake.engines import jdbc_catalog, spark_catalog_conf
from k2.lake.writer import TableWriter


def test_spark_conf_of_the_embedded_warehouse(tmp_path: Path) -> None:
    lake = LakeSettings(warehouse=tmp_path / "wh")
    prefix = "spark.sql.catalog.k2"
    assert spark_catalog_conf(lake) == {
        prefix: "org.apache.iceberg.spark.SparkCatalog",
        f"{prefix}.type": "jdbc",
        f"{prefix}.uri": f"jdbc:sqlite:{(tmp_path / 'wh' / 'catalog.db').resolve()}",
        f"{prefix}.warehouse": (tmp_path / "wh").resolve().as_uri(),
        f"{prefix}.jdbc.init-catalog-tables": "false",
    }


def test_spark_conf_of_the_distributed_stack() -> None:
    lake = LakeSettings(
        catalog_uri="postgresql+psycopg://k2:s3cret@db.example:5433/k2cat",
        warehouse_uri="s3://bucket/wh",
        catalog_name="prod",
        s3=S3Settings(endpoint="http://s3:9000", access_key_id=SecretStr("AK"), secret_access_key=SecretStr("SK")),
    )
    conf = spark_catalog_conf(lake)
    p = "spark.sql.catalog.prod"
    assert conf[f"{p}.uri"] == "jdbc:postgresql://db.example:5433/k2cat"
    assert (conf[f"{p}.jdbc.user"], conf[f"{p}.jdbc.password"]) == ("k2", "s3cret")
    assert conf[f"{p}.warehouse"] == "s3://bucket/wh"
    assert conf[f"{p}.io-impl"] == "org.apache.iceberg.aws.s3.S3FileIO"
    assert (conf[f"{p}.s3.endpoint"], conf[f"{p}.s3.path-style-access"]) == ("http://s3:9000", "true")
    assert (conf[f"{p}.s3.access-key-id"], conf[f"{p}.s3.secret-access-key"]) == ("AK", "SK")
    assert conf[f"{p}.client.region"] == "us-east-1"


def test_an_unsupported_catalog_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="SQLite and PostgreSQL"):
        jdbc_catalog(LakeSettings(catalog_uri="mysql://u@h/db"))


def test_k2_maintain_prints_health_and_json(catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch) -> None:
    writer = TableWriter(catalog, (lake.namespace, lake.trades_table), lake)
    for i in range(6):
        writer.append(trades.slice(i * 100, 100))
    runner = CliRunner()

    result = runner.invoke(app, ["maintain", "--warehouse", str(lake.warehouse), "--format", "csv"])

    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [r["table"] for r in rows] == ["market_data.trades"]  # the quality-events table does not exist here
    assert (rows[0]["files"], rows[0]["compacted"]) == ("6 -> 1", "6")
    text = runner.invoke(app, ["maintain", "--warehouse", str(lake.warehouse), "--table", "trades"])
    assert text.exit_code == 0
    assert "max files/partition" in text.output and "market_data.trades" in text.output


def test_k2_maintain_fails_with_one_line_for_a_missing_table(lake: LakeSettings) -> None:
    result = CliRunner().invoke(app, ["maintain", "--warehouse", str(lake.warehouse), "--table", "nope"])
    assert result.exit_code == 1
    assert "cannot load table market_data.nope" in result.output
