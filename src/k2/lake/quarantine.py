"""Quarantine: every rejected frame is kept, raw and exact, with the reason, and counted.

Files are JSON lines under ``<warehouse>/quarantine/<venue>/<YYYY-MM-DD>.jsonl`` (UTC receive date)::

    {"received_at": "2024-08-08T23:54:15.343000+00:00", "venue": "binance", "reason": "invalid_number",
     "detail": "not a decimal number: 'abc'", "raw": "<the frame text>"}

A frame that is not valid UTF-8 is stored base64-encoded in ``raw_b64`` instead of ``raw``. Each
reason is logged once per interval (with a repeat count), never once per frame.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from k2.errors import LakeError
from k2.logging import RateLimitedLogger, get_logger
from k2.metrics import MESSAGES_REJECTED
from k2.sources.base import Rejected

log = get_logger(__name__)


class Quarantine:
    """Appends rejected frames to per-day JSON-lines files and counts them by reason."""

    def __init__(self, directory: Path, venue: str, log_interval_s: float = 10.0) -> None:
        self.directory = directory / venue
        self.venue = venue
        self.counts: Counter[str] = Counter()
        self._limited = RateLimitedLogger(log, interval_s=log_interval_s)

    def add(self, rejects: Sequence[Rejected]) -> None:
        if not rejects:
            return
        by_file: dict[Path, list[str]] = {}
        for r in rejects:
            received = datetime.fromtimestamp(r.frame.received_at_us / 1_000_000, tz=UTC)
            entry: dict[str, Any] = {
                "received_at": received.isoformat(),
                "venue": self.venue,
                "reason": r.reason.value,
                "detail": r.detail,
            }
            try:
                entry["raw"] = r.frame.payload.decode("utf-8")
            except UnicodeDecodeError:
                entry["raw_b64"] = base64.b64encode(r.frame.payload).decode("ascii")
            path = self.directory / f"{received.date().isoformat()}.jsonl"
            by_file.setdefault(path, []).append(json.dumps(entry, ensure_ascii=False))
            self.counts[r.reason.value] += 1
            MESSAGES_REJECTED.labels(venue=self.venue, reason=r.reason.value).inc()
            self._limited.warning(
                "frame.rejected",
                key=r.reason.value,
                venue=self.venue,
                reason=r.reason.value,
                detail=r.detail,
                raw=r.frame.payload[:200].decode("utf-8", "replace"),
                quarantine=str(path),
            )
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for path, lines in by_file.items():
                with path.open("a", encoding="utf-8") as fh:
                    fh.write("\n".join(lines) + "\n")
        except OSError as exc:
            raise LakeError(f"cannot write quarantine file in {self.directory}: {exc}") from exc


def read_quarantine(directory: Path) -> Iterator[dict[str, Any]]:
    """Every quarantined entry under ``directory`` (all venues, all days), oldest file first."""
    for path in sorted(directory.rglob("*.jsonl")):
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    entry: dict[str, Any] = json.loads(line)
                    yield entry
