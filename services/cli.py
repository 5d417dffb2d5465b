"""The ``servekit`` command line: rollout state and experiment reports.

``app`` is the console script's entry point (``servekit = services.cli:app``); other
modules' commands join it with ``app.add_typer(...)`` or ``@app.command()``.

    servekit rollout status fraud
    servekit rollout shadow fraud v2 --reason "new features"
    servekit rollout canary fraud v2 --percent 5
    servekit rollout promote fraud
    servekit experiment report fraud
"""

from __future__ import annotations

import asyncio
import getpass
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import redis.asyncio as aioredis
import typer
from redis.exceptions import RedisError
from rich.console import Console
from rich.table import Table

from services.errors import ServekitError
from services.rollout.feedback import FeedbackStore
from services.rollout.state import RolloutEvent, RolloutStore
from services.rollout.statistics import ExperimentReport
from services.rollout.transitions import RolloutState
from services.settings import get_settings

T = TypeVar("T")

app = typer.Typer(name="servekit", help="servekit: model serving on BentoML.", no_args_is_help=True)
rollout_app = typer.Typer(help="Shadow runs, canaries, A/B tests: read and change rollout state.")
experiment_app = typer.Typer(help="A/B and canary experiment analysis.")
app.add_typer(rollout_app, name="rollout", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment", no_args_is_help=True)

console = Console()
err_console = Console(stderr=True)

Model = Annotated[str, typer.Argument(help="The model's name.")]
Candidate = Annotated[str, typer.Argument(help="The candidate version.")]
Reason = Annotated[str, typer.Option("--reason", "-r", help="Why (kept in the history).")]


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return "servekit-cli"


Actor = Annotated[
    str | None, typer.Option("--actor", help="Who (kept in the history; default: $USER).")
]


def _run(work: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    """Run ``work`` against the configured Redis; errors become a message and exit 1."""
    url = get_settings().redis.url
    if url is None:
        err_console.print(
            "[red]error:[/] no Redis configured: set SERVEKIT_REDIS_URL "
            "(e.g. redis://localhost:6379/0) to the Redis the gateway uses."
        )
        raise typer.Exit(2)

    async def main() -> T:
        client = aioredis.Redis.from_url(url)
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
    who = actor or _default_actor()

    async def run(client: aioredis.Redis) -> RolloutState:
        store = RolloutStore(client, history_maxlen=get_settings().rollout.history_maxlen)
        return await work(store, who)

    _print_state(_run(run))


@rollout_app.command("status")
def rollout_status(
    model: Model,
    history: Annotated[int, typer.Option("--history", "-n", min=0, help="History rows.")] = 5,
) -> None:
    """Show a model's rollout state and its latest changes."""

    async def run(client: aioredis.Redis) -> tuple[RolloutState, list[RolloutEvent]]:
        store = RolloutStore(client)
        state = await store.get(model)
        return state, (await store.history(model, history) if history else [])

    state, events = _run(run)
    _print_state(state)
    if events:
        _print_history(model, events)


@rollout_app.command("history")
def rollout_history(
    model: Model, n: Annotated[int, typer.Option("-n", min=1, help="Rows.")] = 20
) -> None:
    """Show a model's rollout history: when, what, why, who."""
    _print_history(model, _run(lambda client: RolloutStore(client).history(model, n)))


@rollout_app.command("set-primary")
def rollout_set_primary(
    model: Model,
    version: Annotated[str, typer.Argument(help="The version to serve.")],
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


def _fmt(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def _print_report(report: ExperimentReport, percent: float | None) -> None:
    table = Table(title=f"experiment {report.experiment_id} of {report.model}")
    columns = ["variant", "version", "predictions", "errors", "error rate", "outcomes"]
    columns += ["conversions", "conv. rate", "p50 ms", "p95 ms", "p99 ms"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("variant", "version") else "right")
    for v in report.variants.values():
        table.add_row(
            v.variant,
            v.version or "-",
            str(v.predictions),
            str(v.errors),
            _fmt(v.error_rate, ".2%"),
            str(v.outcomes),
            str(v.conversions),
            _fmt(v.conversion_rate, ".2%"),
            _fmt(v.latency.p50_ms, ".1f"),
            _fmt(v.latency.p95_ms, ".1f"),
            _fmt(v.latency.p99_ms, ".1f"),
        )
    console.print(table)
    if report.srm is None:
        console.print("SRM check: skipped (split unknown; pass --percent)")
    else:
        verdict = "[red]MISMATCH[/]" if report.srm.mismatch else "ok"
        console.print(
            f"SRM check vs {100 - (percent or 0):g}/{percent:g}: {verdict} "
            f"(chi2 {report.srm.chi2:.2f}, p {report.srm.p_value:.2g})"
        )
    if report.conversion_test is not None:
        z = report.conversion_test
        console.print(
            f"conversion z-test: diff {z.diff:+.4f} [{z.ci_low:+.4f}, {z.ci_high:+.4f}], "
            f"p {z.p_value:.3g} (valid for one look only)"
        )
    if report.sequential is not None:
        s = report.sequential
        console.print(
            f"mSPRT: [bold]{s.decision}[/] (always-valid p {s.p_value:.3g}, "
            f"diff {s.diff:+.4f} [{s.ci_low:+.4f}, {s.ci_high:+.4f}])"
        )


@experiment_app.command("report")
def experiment_report(
    model: Model,
    experiment_id: Annotated[
        str | None, typer.Option("--experiment-id", "-e", help="Default: the newest.")
    ] = None,
    percent: Annotated[
        float | None,
        typer.Option(
            "--percent",
            "-p",
            help="The candidate's configured share, for the SRM check (default: the running "
            "A/B test's).",
        ),
    ] = None,
) -> None:
    """Per-variant counts, rates and latencies, SRM check and tests of an experiment."""
    settings = get_settings().rollout

    async def run(client: aioredis.Redis) -> tuple[ExperimentReport, float | None]:
        feedback = FeedbackStore(client)
        share = percent
        experiment = experiment_id or next(iter(await feedback.experiments(model)), None)
        if share is None and experiment is not None:
            state = await RolloutStore(client).find(model)
            # Only an A/B test keeps its split for its whole life; a canary's moves.
            if state is not None and state.mode == "ab" and state.experiment_id == experiment:
                share = state.percent
        report = await feedback.report(
            model,
            experiment,
            candidate_percent=share,
            alpha=settings.alpha,
            tau2=settings.msprt_tau2,
        )
        return report, share

    report, share = _run(run)
    _print_report(report, share)
