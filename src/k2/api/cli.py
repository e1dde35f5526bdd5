"""`k2 api-key create|list|revoke`: the API keys of a warehouse's service (see :mod:`k2.api.keys`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from k2.api.keys import KeyStore, Scope, keys_path
from k2.config import load_settings
from k2.errors import ConfigError, K2Error

api_key_app = typer.Typer(help="API keys of `k2 serve` (stored hashed; docs/api.md).", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

WarehouseOpt = Annotated[
    Path | None, typer.Option("--warehouse", "-w", help="Warehouse whose key file to use (default: settings).")
]
KeysFileOpt = Annotated[
    Path | None, typer.Option(help="The key file (default: api.keys_file or <warehouse>/api-keys.json).")
]


def _store(warehouse: Path | None, keys_file: Path | None) -> KeyStore:
    data = load_settings().model_dump()
    if warehouse is not None:
        data["lake"]["warehouse"] = warehouse
    if keys_file is not None:
        data["api"]["keys_file"] = keys_file
    return KeyStore(keys_path(load_settings(**data)))


def _fail(exc: K2Error) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


@api_key_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="Who or what uses the key.")],
    scope: Annotated[list[str] | None, typer.Option(help="read, sql or admin (repeatable; default read).")] = None,
    rate_limit: Annotated[
        str | None, typer.Option(help="Its own limit, e.g. 200/second (default: the service's).")
    ] = None,
    warehouse: WarehouseOpt = None,
    keys_file: KeysFileOpt = None,
) -> None:
    """Create a key and print it once (only its SHA-256 is stored)."""
    try:
        scopes = tuple(Scope(s) for s in (scope or ["read"]))
    except ValueError:
        raise _fail(ConfigError(f"unknown scope in {scope}: use read, sql or admin")) from None
    try:
        key, record = _store(warehouse, keys_file).create(name, scopes, rate_limit)
    except K2Error as exc:
        raise _fail(exc) from None
    out.print(f"created key {record.key_id} ({', '.join(s.value for s in record.scopes)}) for {name!r}:")
    out.print(key, highlight=False, soft_wrap=True)
    out.print("[dim]store it now: it cannot be shown again[/dim]")


@api_key_app.command("list")
def list_keys(warehouse: WarehouseOpt = None, keys_file: KeysFileOpt = None) -> None:
    """Keys with their scopes and state (never the secrets)."""
    try:
        records = _store(warehouse, keys_file).records()
    except K2Error as exc:
        raise _fail(exc) from None
    view = Table("key_id", "name", "scopes", "created_at", "revoked_at", "rate_limit")
    for r in records:
        view.add_row(
            r.key_id, r.name, ",".join(s.value for s in r.scopes), r.created_at, r.revoked_at or "", r.rate_limit or ""
        )
    out.print(view)


@api_key_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `k2 api-key list`).")],
    warehouse: WarehouseOpt = None,
    keys_file: KeysFileOpt = None,
) -> None:
    """Revoke a key: a running service refuses it from its next request."""
    try:
        record = _store(warehouse, keys_file).revoke(key_id)
    except K2Error as exc:
        raise _fail(exc) from None
    out.print(f"revoked {record.key_id} ({record.name}) at {record.revoked_at}")
