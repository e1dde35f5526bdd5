"""Golden schema files: generated from the canonical definitions, committed, checked for drift.

``python -m k2.schema.golden`` rewrites ``src/k2/schema/golden/``; ``tests/unit/schema`` fails when
the committed files differ from what the definitions produce.
"""

from __future__ import annotations

import json
from pathlib import Path

from k2.schema.arrow import to_arrow
from k2.schema.avro import to_avro
from k2.schema.iceberg import to_iceberg
from k2.schema.model import RecordSchema
from k2.schema.quality_event import QUALITY_EVENT_V1
from k2.schema.quote import QUOTE_VERSIONS
from k2.schema.trade import TRADE_VERSIONS

GOLDEN_DIR = Path(__file__).parent / "golden"
RECORDS: tuple[RecordSchema, ...] = (*TRADE_VERSIONS, *QUOTE_VERSIONS, QUALITY_EVENT_V1)


def _snake(name: str) -> str:
    """``QualityEvent`` -> ``quality_event``."""
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))


def golden_files() -> dict[str, str]:
    """File name -> expected text, for every canonical record."""
    out: dict[str, str] = {}
    for record in RECORDS:
        stem = f"{_snake(record.name)}_v{record.version}"
        out[f"{stem}.avsc"] = json.dumps(to_avro(record), indent=2) + "\n"
        out[f"{stem}.iceberg.json"] = to_iceberg(record).model_dump_json(indent=2) + "\n"
        arrow = [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in to_arrow(record)]
        out[f"{stem}.arrow.json"] = json.dumps(arrow, indent=2) + "\n"
    return out


def write_golden(directory: Path = GOLDEN_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in golden_files().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_golden():
        print(p)
