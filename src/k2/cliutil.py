"""What every `k2` command shares: the consoles, one-line errors, settings from options, tables printed.

Only the CLI turns an error into an exit code (1) and a one-line message on stderr (see
:mod:`k2.cli`): :func:`errors` wraps a command's work.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from k2.config import K2Settings, load_settings
from k2.errors import ConfigError, K2Error
from k2.logging import get_logger, logs_json

log = get_logger(__name__)

out = Console()
err = Console(stderr=True)

SymbolsOpt = Annotated[
    str | None,
    typer.Option("--symbols", "-s", help="Comma-separated symbols, venue-native (BTCUSDT) or canonical (BTC/USDT)."),
]
WarehouseOpt = Annotated[Path | None, typer.Option("--warehouse", "-w", help="Iceberg warehouse directory.")]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")]
VenueOpt = Annotated[str | None, typer.Option("--venue", help="The venue (default: binance; k2.sources.VENUES).")]
KindsOpt = Annotated[
    str | None, typer.Option("--kinds", help="Comma-separated record kinds: trades, quotes (default: both).")
]


@contextmanager
def errors() -> Iterator[None]:
    try:
        yield
    except K2Error as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except Exception as exc:  # a bug: one line, the traceback to a file
        report_unexpected(exc)
        raise typer.Exit(1) from None


_MAX_MESSAGE_CHARS = 300


def report_unexpected(exc: BaseException) -> None:
    """One line on stderr for an exception nothing handled; its plain traceback (no locals: fast
    whatever the frames hold) goes to a file in the temp directory, named in the line (and in the
    ``cli.unexpected_error`` event when services log JSON)."""
    message = " ".join(str(exc).split())
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[: _MAX_MESSAGE_CHARS - 3] + "..."
    path = Path(tempfile.gettempdir()) / f"k2-error-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.txt"
    saved = ""
    with contextlib.suppress(OSError):  # a read-only temp directory: the log event still says what failed
        path.write_text("".join(traceback.format_exception(exc)))
        saved = str(path)
    if logs_json():  # for the log pipeline; a human console gets the one line below only
        log.error("cli.unexpected_error", error_type=type(exc).__name__, error=message, traceback_file=saved or None)
    where = f" (traceback in {saved})" if saved else ""
    err.print(
        f"[red]error:[/red] unexpected {type(exc).__name__}: {escape(message)}{escape(where)}",
        highlight=False, soft_wrap=True,
    )  # fmt: skip


def settings_from(*, symbols: str | None = None, warehouse: Path | None = None, **source: Any) -> K2Settings:
    """Settings from env/file, with command-line options (non-None) taking precedence."""
    data = load_settings().model_dump()
    data["source"].update({k: v for k, v in source.items() if v is not None})
    if symbols:
        data["source"]["symbols"] = tuple(s for s in symbols.split(",") if s.strip())
    if warehouse:
        data["lake"]["warehouse"] = warehouse
    return load_settings(**data)


def parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"not an ISO-8601 time: {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def print_arrow(table: pa.Table, fmt: str = "table", title: str | None = None) -> None:
    """Print an Arrow table as a rich table, CSV or JSON lines (decimals printed exactly)."""
    rows = table.to_pylist()
    if fmt == "json":
        for row in rows:
            out.print_json(json.dumps(row, default=str))
        return
    if fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(table.column_names)
        for row in rows:
            writer.writerow([cell(v) for v in row.values()])
        return
    view = Table(title=title, show_lines=False, caption="times in UTC" if _has_time(table) else None)
    for name in table.column_names:
        view.add_column(name, overflow="fold")
    for row in rows:
        view.add_row(*(cell(v) for v in row.values()))
    out.print(view)


def _has_time(table: pa.Table) -> bool:
    return any(pa.types.is_timestamp(f.type) for f in table.schema)


def cell(value: Any) -> str:
    """Display form: exact decimals without padding zeros, UTC times without the offset noise."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        text = format(value, "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f").removesuffix(".000000")
    if isinstance(value, list) and value and isinstance(value[0], tuple):
        return json.dumps(dict(value))
    return str(value)
