"""Error messages lose every server path, object-store ones included."""

from __future__ import annotations

from pathlib import Path

from k2.api.problems import Redactor, from_error
from k2.errors import QueryError, ReadOnlyViolation, SnapshotExpired


def test_an_s3_warehouse_is_redacted_in_both_spellings(tmp_path: Path) -> None:
    redact = Redactor([tmp_path / "warehouse", "s3://k2-warehouse/wh-a1", None])
    messages = [
        "cannot read the data files of md.trades: [Errno 2] Path does not exist "
        "'k2-warehouse/wh-a1/md/trades/data/x.parquet'. Detail: [errno 2] No such file or directory",
        "IO Error: No files found that match the pattern s3://k2-warehouse/wh-a1/md/trades/data/x.parquet",
        f"cannot open {tmp_path / 'warehouse' / 'catalog.db'}",
    ]
    cleaned = [redact(m) for m in messages]
    assert all("k2-warehouse" not in c and "wh-a1" not in c and str(tmp_path) not in c for c in cleaned)
    assert cleaned[0].startswith("cannot read the data files of md.trades: [Errno 2] Path does not exist '<path>")


def test_each_k2_error_gets_its_status() -> None:
    """A read whose files maintenance removed is worth asking again (503), unlike a bad query (400)."""
    redact = Redactor([None])
    expired = from_error(SnapshotExpired("files of snapshot 7 are gone"), redact)
    assert (expired.status, expired.code, expired.headers) == (503, "snapshot_expired", {"Retry-After": "0"})
    assert from_error(QueryError("bad interval"), redact).status == 400
    assert from_error(ReadOnlyViolation("refused"), redact).status == 403
