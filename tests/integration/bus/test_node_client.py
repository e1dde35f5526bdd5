"""Any Confluent-compatible client reads K2's topics: Node.js kafkajs + @kafkajs/confluent-schema-registry.

The npm packages (pinned in node/package.json) are installed once into ~/.cache/k2/node-bus by the
test itself. Skipped when Node.js is not installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from k2.config import K2Settings
from k2.devservices.common import cache_dir, file_lock
from tests.integration.bus.conftest import produce

pytestmark = pytest.mark.integration

NODE_DIR = Path(__file__).parent / "node"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _node_modules() -> Path:
    """The reader's directory with its npm packages installed (cached across runs)."""
    target = cache_dir() / "node-bus"
    target.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_suffix(".lock")):
        for name in ("package.json", "read_topic.js"):
            shutil.copyfile(NODE_DIR / name, target / name)
        stamp = target / "node_modules" / ".k2-installed"
        wanted = (NODE_DIR / "package.json").read_text()
        if not stamp.exists() or stamp.read_text() != wanted:
            subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", "--omit=dev"],
                cwd=target,
                check=True,
                capture_output=True,
                timeout=300,
            )
            stamp.write_text(wanted)
    return target


def _decimal(hex_text: str) -> Decimal:
    return Decimal(int.from_bytes(bytes.fromhex(hex_text), "big", signed=True)).scaleb(-12)


@pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None, reason="Node.js not installed")
def test_kafkajs_decodes_the_topic_exactly(bus_settings: K2Settings, recording_batch: pa.RecordBatch) -> None:
    # kafkajs decompresses only gzip out of the box (zstd/lz4 need native codec plugins), so this
    # topic and producer use gzip; the payload (Confluent framing + Avro) is the same for any codec.
    settings = bus_settings.model_copy(update={"kafka": bus_settings.kafka.model_copy(update={"compression": "gzip"})})
    data = recording_batch.slice(0, 200)
    topic = produce(settings, data)
    reader = _node_modules()
    result = subprocess.run(
        ["node", "read_topic.js", settings.kafka.bootstrap_servers, settings.kafka.schema_registry_url, topic, "200"],
        cwd=reader,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    got = {r["message_id"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert len(got) == 200
    for row in data.to_pylist():
        r = got[row["message_id"]]
        assert r["key"] == row["symbol"] == r["symbol"]
        assert r["side"] == row["side"]
        assert _decimal(r["price_hex"]) == row["price"]
        assert _decimal(r["quantity_hex"]) == row["quantity"]
        assert r["timestamp_us"] == (row["timestamp"] - EPOCH) // timedelta(microseconds=1)
        assert r["vendor_data"] == dict(row["vendor_data"])
        assert r["trade_conditions"] == []
