"""What every ``servekit`` command shares: consoles, argument types, the Redis runner."""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import redis.asyncio as aioredis
import typer
from redis.exceptions import RedisError
from rich.console import Console

from services.errors import InvalidInputError, ServekitError
from services.registry.stores import open_store
from services.registry.versions import ModelRegistry, validate_version
from services.settings import get_settings
from services.state.redis_clients import connect

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)


def check_version(value: str | None) -> str | None:
    """A typer callback: a version argument must be a valid version (never a path)."""
    if value is None:
        return None
    try:
        return validate_version(value)
    except InvalidInputError as exc:
        raise typer.BadParameter(exc.message) from exc


Model = Annotated[str, typer.Argument(help="The model's name.")]
Candidate = Annotated[str, typer.Argument(help="The candidate version.", callback=check_version)]
Version = Annotated[str, typer.Argument(help="The version to serve.", callback=check_version)]
Reason = Annotated[str, typer.Option("--reason", "-r", help="Why (kept in the history).")]


def default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return "servekit-cli"


Actor = Annotated[
    str | None, typer.Option("--actor", help="Who (kept in the history; default: $USER).")
]


def run_redis(work: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    """Run ``work`` against the configured Redis; errors become a message and exit 1."""
    url = get_settings().redis.url
    if url is None:
        err_console.print(
            "[red]error:[/] no Redis configured: set SERVEKIT_REDIS_URL "
            "(e.g. redis://localhost:6379/0) to the Redis the gateway uses."
        )
        raise typer.Exit(2)

    async def main() -> T:
        client = connect(url)
        try:
            return await work(client)
        finally:
            await client.aclose()

    try:
        return asyncio.run(main())
    except ServekitError as exc:
        err_console.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(1) from exc
    except RedisError as exc:
        err_console.print(f"[red]error:[/] Redis failed: {exc}")
        raise typer.Exit(1) from exc


def open_registry() -> ModelRegistry:
    """The model registry the gateway serves from (``SERVEKIT_MODEL_STORE``)."""
    return ModelRegistry(open_store(get_settings().serving))
