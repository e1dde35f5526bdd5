"""``k2 dev up|restart|down|status|env``: the distributed-mode services for development (docs/distributed.md)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from k2.errors import DevServiceError, K2Error
from k2.logging import configure_logging

dev_app = typer.Typer(
    help="Run Kafka, Apicurio Registry, s3proxy and PostgreSQL locally.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

out = Console()
err = Console(stderr=True)

RootOpt = Annotated[Path | None, typer.Option(help="Stack directory (default: ~/.cache/k2/devstack).")]


def _fail(exc: K2Error) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


@dev_app.command()
def up(
    services: Annotated[str, typer.Option(help="Comma-separated: kafka,registry,s3,postgres.")] = (
        "kafka,registry,s3,postgres"
    ),
    root: RootOpt = None,
) -> None:
    """Start the services in the background (first run downloads them with Maven/apt)."""
    configure_logging(level="WARNING")
    from k2.devservices.stack import DevStack

    try:
        stack = DevStack(
            root=_root(root),
            services=tuple(s.strip() for s in services.split(",") if s.strip()),
            detach=True,
        )
        timings = stack.up()
    except K2Error as exc:
        raise _fail(exc) from None
    for name, endpoint in stack.endpoints().items():
        out.print(f"{name:<9} up in {timings[name]:5.1f}s  {endpoint}", highlight=False, soft_wrap=True)
    out.print('Point K2 at it with: eval "$(k2 dev env)"   Stop it with: k2 dev down', highlight=False, soft_wrap=True)


@dev_app.command()
def fetch(
    services: Annotated[
        str, typer.Option(help="Comma-separated: kafka,registry,s3,postgres,spark (spark: the Spark tests' jars).")
    ] = "kafka,registry,s3,postgres,spark",
) -> None:
    """Download the services into ~/.m2 and ~/.cache/k2 (and PostgreSQL via apt-get) without starting them."""
    configure_logging(level="WARNING")
    from k2.devservices.stack import FETCHABLE
    from k2.devservices.stack import fetch as fetch_services

    names = tuple(s.strip() for s in services.split(",") if s.strip())
    try:
        unknown = sorted(set(names) - set(FETCHABLE))
        if unknown:
            raise DevServiceError(f"unknown service(s) {unknown}: choose from {', '.join(FETCHABLE)}")
        timings = fetch_services(names)
    except K2Error as exc:
        raise _fail(exc) from None
    for name, seconds in timings.items():
        out.print(f"{name:<9} ready in {seconds:5.1f}s", highlight=False, soft_wrap=True)


@dev_app.command()
def down(root: RootOpt = None) -> None:
    """Stop the services and delete the stack's data."""
    configure_logging(level="WARNING")
    from k2.devservices.stack import DevStack, read_state

    stack_root = _root(root)
    try:
        state = read_state(stack_root)
        DevStack(root=stack_root, services=tuple(state["services"]), detach=True).down()
    except K2Error as exc:
        raise _fail(exc) from None
    out.print("dev stack stopped")


@dev_app.command()
def status(root: RootOpt = None) -> None:
    """Show whether each service of the stack answers on its port (exit code 1 if any is down)."""
    from k2.devservices.stack import read_state
    from k2.devservices.stack import status as stack_status

    stack_root = _root(root)
    try:
        states = stack_status(stack_root)
        endpoints = read_state(stack_root)["endpoints"]
    except K2Error as exc:
        raise _fail(exc) from None
    for name, state in states.items():
        note = f"  ({state.note})" if state.note else ""
        out.print(f"{name:<9} {state.state:<5} {endpoints[name]}{note}", highlight=False, soft_wrap=True)
    if any(state.state != "up" for state in states.values()):
        raise typer.Exit(1)


@dev_app.command()
def restart(
    service: Annotated[str, typer.Argument(help="kafka, registry, s3 or postgres.")],
    root: RootOpt = None,
) -> None:
    """Restart one service of the running stack, keeping its data, ports and credentials."""
    configure_logging(level="WARNING")
    from k2.devservices.stack import DevStack

    try:
        stack = DevStack.from_state(_root(root))
        seconds = stack.restart(service)
    except K2Error as exc:
        raise _fail(exc) from None
    out.print(f"{service:<9} up in {seconds:5.1f}s  {stack.endpoints()[service]}", highlight=False, soft_wrap=True)


@dev_app.command()
def env(root: RootOpt = None) -> None:
    """Print ``export K2_...=...`` lines for the running stack (includes credentials)."""
    from k2.devservices.stack import read_state

    try:
        variables = read_state(_root(root))["env"]
    except K2Error as exc:
        raise _fail(exc) from None
    for key, value in variables.items():
        typer.echo(f"export {key}={shlex.quote(value)}")


def _root(root: Path | None) -> Path:
    from k2.devservices.stack import default_root

    return root or default_root()
