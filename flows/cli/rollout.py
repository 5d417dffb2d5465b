"""``servekit rollout``: read and change a model's rollout state (shadow, canary, A/B)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated

import redis.asyncio as aioredis
import typer
from rich.table import Table

from flows.cli.common import (
    Actor,
    Candidate,
    Model,
    Reason,
    Version,
    console,
    default_actor,
    err_console,
    open_registry,
    run_redis,
)
from services.errors import ModelNotFoundError, ServekitError
from services.rollout.state import RolloutEvent, RolloutStore
from services.rollout.transitions import RolloutState
from services.settings import get_settings

rollout_app = typer.Typer(help="Shadow runs, canaries, A/B tests: read and change rollout state.")


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds")


def _print_state(state: RolloutState) -> None:
    table = Table(title=f"rollout of {state.model}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("primary", state.primary),
        ("candidate", state.candidate or "-"),
        ("mode", state.mode),
        ("percent", f"{state.percent:g}"),
        ("experiment", state.experiment_id or "-"),
        ("started", _when(state.started_at)),
        ("updated", _when(state.updated_at)),
        ("revision", str(state.revision)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def _print_history(model: str, events: list[RolloutEvent]) -> None:
    table = Table(title=f"history of {model} (newest first)")
    for column in ("when", "action", "mode", "primary", "candidate", "percent", "reason", "who"):
        table.add_column(column)
    for e in events:
        s = e.state
        table.add_row(
            _when(e.at),
            e.action,
            s.mode,
            s.primary,
            s.candidate or "-",
            f"{s.percent:g}",
            e.reason or "-",
            e.actor,
        )
    console.print(table)


def _change(
    actor: str | None, work: Callable[[RolloutStore, str], Awaitable[RolloutState]]
) -> None:
    """Apply one change as ``actor`` (default: the user running the CLI); show the result."""
    who = actor or default_actor()

    async def run(client: aioredis.Redis) -> RolloutState:
        store = RolloutStore(client, history_maxlen=get_settings().rollout.history_maxlen)
        return await work(store, who)

    _print_state(run_redis(run))


@rollout_app.command("status")
def rollout_status(
    model: Model,
    history: Annotated[int, typer.Option("--history", "-n", min=0, help="History rows.")] = 5,
) -> None:
    """Show a model's rollout state and its latest changes."""

    async def run(client: aioredis.Redis) -> tuple[RolloutState | None, list[RolloutEvent]]:
        store = RolloutStore(client)
        state = await store.find(model)
        if state is None:
            return None, []
        return state, (await store.history(model, history) if history else [])

    state, events = run_redis(run)
    if state is None:
        _print_no_state(model)
        return
    _print_state(state)
    if events:
        _print_history(model, events)


def _print_no_state(model: str) -> None:
    """No rollout state yet: the mode is off; say which version serves and how to start."""
    try:
        served: str | None = open_registry().get(model).version
    except ModelNotFoundError:
        err_console.print(f"[red]error:[/] no model {model!r} in the registry and no rollout state")
        raise typer.Exit(1) from None
    except ServekitError as exc:
        served = None
        err_console.print(f"[yellow]warning:[/] registry not readable: {exc.message}")
    console.print(
        f"{model}: mode off, no rollout state yet; the gateway serves "
        f"{'version ' + served if served else 'its production version'} and creates the state "
        f"(primary = that version) when it starts. To set it now: "
        f"servekit rollout set-primary {model} {served or 'VERSION'}"
    )


@rollout_app.command("history")
def rollout_history(
    model: Model, n: Annotated[int, typer.Option("-n", min=1, help="Rows.")] = 20
) -> None:
    """Show a model's rollout history: when, what, why, who."""
    _print_history(model, run_redis(lambda client: RolloutStore(client).history(model, n)))


@rollout_app.command("set-primary")
def rollout_set_primary(
    model: Model,
    version: Version,
    reason: Reason = "",
    actor: Actor = None,
) -> None:
    """Create a model's rollout state, or replace its primary while no rollout runs."""
    _change(actor, lambda store, who: store.set_primary(model, version, reason, who))


@rollout_app.command("shadow")
def rollout_shadow(
    model: Model, candidate: Candidate, reason: Reason = "", actor: Actor = None
) -> None:
    """Mirror traffic to a candidate; the primary keeps answering."""
    _change(actor, lambda store, who: store.start_shadow(model, candidate, reason, who))


@rollout_app.command("canary")
def rollout_canary(
    model: Model,
    candidate: Candidate,
    percent: Annotated[
        float | None,
        typer.Option("--percent", "-p", help="Share of live traffic (default: first step)."),
    ] = None,
    reason: Reason = "",
    actor: Actor = None,
) -> None:
    """Send a share of live traffic to a candidate (sticky per user)."""
    share = percent if percent is not None else get_settings().rollout.canary_steps[0]
    _change(actor, lambda store, who: store.start_canary(model, candidate, share, reason, who))


@rollout_app.command("percent")
def rollout_percent(
    model: Model,
    percent: Annotated[float, typer.Argument(help="New share of live traffic, 0..100.")],
    reason: Reason = "",
    actor: Actor = None,
) -> None:
    """Change the candidate's share of a running canary or A/B test."""
    _change(actor, lambda store, who: store.set_percent(model, percent, reason, who))


@rollout_app.command("ab")
def rollout_ab(
    model: Model,
    candidate: Candidate,
    percent: Annotated[float, typer.Option("--percent", "-p", help="Candidate share.")] = 50.0,
    experiment_id: Annotated[
        str | None, typer.Option("--experiment-id", help="Default: generated.")
    ] = None,
    reason: Reason = "",
    actor: Actor = None,
) -> None:
    """Start an A/B experiment with a fresh salt."""
    _change(
        actor,
        lambda store, who: store.start_ab(model, candidate, percent, reason, who, experiment_id),
    )


@rollout_app.command("promote")
def rollout_promote(model: Model, reason: Reason = "", actor: Actor = None) -> None:
    """Make the candidate the primary and end the rollout."""
    _change(actor, lambda store, who: store.promote(model, reason, who))


@rollout_app.command("rollback")
def rollout_rollback(model: Model, reason: Reason = "", actor: Actor = None) -> None:
    """Drop the candidate and end the rollout."""
    _change(actor, lambda store, who: store.rollback(model, reason, who))
