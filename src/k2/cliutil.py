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
from collections.abc import Iterator, Sequence
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
FeedSymbolsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--symbols",
        "-s",
        help="Comma-separated symbols, venue-native (BTCUSDT) or canonical (BTC/USDT), for every venue; "
        "VENUE:SYMBOLS for one venue of --venues (binance:BTCUSDT,ETHUSDT). Repeatable.",
    ),
]
VenuesOpt = Annotated[
    str | None,
    typer.Option("--venues", help="Several venues in one process, comma-separated (binance,coinbase); or --venue."),
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


def settings_from(
    *,
    symbols: str | Sequence[str] | None = None,
    warehouse: Path | None = None,
    venues: str | None = None,
    ws_url: str | Sequence[str] | None = None,
    rest_url: str | Sequence[str] | None = None,
    **source: Any,
) -> K2Settings:
    """Settings from env/file, with command-line options (non-None) taking precedence.

    ``venues`` (``binance,coinbase``) runs several venues; ``venue`` one (``--venue`` and ``--venues``
    exclude each other). ``symbols``, ``ws_url`` and ``rest_url`` values are for every venue, or for
    one when prefixed with its name and a colon (``binance:BTCUSDT,ETHUSDT``, ``binance:ws://...``):
    see :func:`per_venue`.
    """
    data = load_settings().model_dump()
    src = data["source"]
    if venues is not None and source.get("venue") is not None:
        raise ConfigError("give --venue or --venues, not both")
    if source.get("venue") is not None:
        src["venues"] = ()
    if venues is not None:
        src["venues"] = tuple(v for v in venues.split(",") if v.strip())
        if not src["venues"]:
            raise ConfigError("--venues needs at least one venue")
    src.update({k: v for k, v in source.items() if v is not None})
    names = tuple(v.strip().lower() for v in src["venues"]) or (str(src["venue"]).strip().lower(),)
    feeds: dict[str, dict[str, Any]] = {k.strip().lower(): v for k, v in src.get("feeds", {}).items()}
    for option, values in (("symbols", symbols), ("ws_url", ws_url), ("rest_url", rest_url)):
        shared, own = per_venue(option, [values] if isinstance(values, str) else list(values or ()), names)
        if shared is not None:
            src[option] = shared
        for venue, value in own.items():
            feeds.setdefault(venue, {})[option] = value
    src["feeds"] = feeds
    if warehouse:
        data["lake"]["warehouse"] = warehouse
    return load_settings(**data)


def per_venue(option: str, values: list[str], venues: Sequence[str]) -> tuple[Any, dict[str, Any]]:
    """(value for every venue or None, {venue: its own value}) of a repeatable option.

    A value starting with one of ``venues`` and ``:`` is that venue's (``binance:BTCUSDT,ETHUSDT``;
    ``binance:ws://127.0.0.1:9443``); naming a registered venue that is not run is a ConfigError.
    ``symbols`` values are comma-separated lists (several unprefixed ones add up); a URL option takes
    one value per venue and at most one unprefixed.
    """
    from k2.sources import venue_names  # the registry is only needed to tell a stray prefix

    known = set(venue_names())
    shared: list[str] = []
    own: dict[str, list[str]] = {}
    for value in values:
        head, sep, rest = value.partition(":")
        name = head.strip().lower()
        if sep and name in venues and not rest.startswith("//"):
            own.setdefault(name, []).append(rest)
        elif sep and name in known and not rest.startswith("//"):
            raise ConfigError(f"--{option.replace('_', '-')} {value!r}: {name} is not among the venues run")
        else:
            shared.append(value)
    if option == "symbols":

        def split(texts: list[str]) -> tuple[str, ...]:
            return tuple(s for t in texts for s in t.split(",") if s.strip())

        return (split(shared) or None), {venue: split(texts) for venue, texts in own.items()}
    for venue, texts in [("", shared), *own.items()]:
        if len(texts) > 1:
            raise ConfigError(f"--{option.replace('_', '-')} given twice for {venue or 'every venue'}")
    return (shared[0] if shared else None), {venue: texts[0] for venue, texts in own.items()}


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
