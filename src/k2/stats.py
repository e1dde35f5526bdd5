"""Run counters: each stage's stats are a dataclass of plain counters; :class:`Counters` gives
them one log/JSON form (``as_dict``), so every stage reports the same way."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from typing import Any


class Counters:
    """Mixin for dataclass stats. ``as_dict``: every field, dicts copied, datetimes as ISO text, and
    a ``started_at`` monotonic time as ``elapsed_s`` since then."""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name == "started_at":
                out["elapsed_s"] = round(time.monotonic() - value, 3)
            elif isinstance(value, dict):
                out[f.name] = dict(value)
            elif isinstance(value, datetime):
                out[f.name] = value.isoformat()
            else:
                out[f.name] = value
        return out
