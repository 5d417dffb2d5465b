"""``servekit report decisions``: the decision-health report of a running gateway.

Watches the gateway's ``/metrics`` over a window (rates need two scrapes), reads its Redis
and registry, and judges every "when to reconsider" signal of docs/design.md. Writes
``DIR/decisions.html`` and ``DIR/decisions.json`` and prints a short table.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli.common import console, err_console
from monitoring.decision_model import DECISIONS, DecisionReport, Verdict
from monitoring.decisions import collect_report, write_report
from services.errors import ServekitError
from services.settings import get_settings

_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_STYLE = {Verdict.FINE: "green", Verdict.RECONSIDER: "bold red", Verdict.NO_DATA: "dim"}


def parse_duration(text: str) -> float:
    """Seconds of ``"60s"``, ``"2m"``, ``"500ms"``, ``"1h"`` or a bare number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h)?\s*", text)
    if match is None:
        raise typer.BadParameter(f"{text!r} is not a duration (e.g. 60s, 2m, 0)")
    return float(match.group(1)) * _UNITS[match.group(2) or ""]


def print_table(report: DecisionReport) -> None:
    """The report's rows, short: decision, signal, subject, value, verdict."""
    table = Table(title=f"decision health of {report.gateway}, measured {report.window}")
    for column in ("decision", "signal", "subject", "measured"):
        table.add_column(column, overflow="fold")
    table.add_column("verdict", no_wrap=True)
    previous = None
    for row in report.rows:
        title = DECISIONS.get(row.decision, row.decision) if row.decision != previous else ""
        previous = row.decision
        verdict = f"[{_STYLE[row.verdict]}]{row.verdict.value}[/]"
        table.add_row(title, row.signal, row.subject or "[dim]gateway[/]", row.value, verdict)
    console.print(table)
    counts = ", ".join(f"{n} {v}" for v, n in report.counts().items())
    console.print(f"{counts}.")
    for problem in report.problems:
        console.print(f"[yellow]not read:[/] {problem}")


def decisions(
    url: Annotated[
        str | None, typer.Option("--url", help="The gateway (default: SERVEKIT_DECISIONS_URL).")
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for decisions.html and decisions.json.")
    ] = Path(".servekit/reports"),
    window: Annotated[
        str | None,
        typer.Option(
            "--window",
            help="How long to watch /metrics for rates, e.g. 60s, 2m; 0: one scrape "
            "(default: SERVEKIT_DECISIONS_WINDOW_S).",
        ),
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option("--redis-url", help="The gateway's Redis (default: SERVEKIT_REDIS_URL)."),
    ] = None,
) -> None:
    """Judge every serving decision's "when to reconsider" signals on live data."""
    settings = get_settings()
    window_s = parse_duration(window) if window is not None else settings.decisions.window_s
    gateway = url or settings.decisions.url
    if window_s > 0:
        console.print(f"watching {gateway} for {window_s:g} s ...")
    try:
        report = asyncio.run(
            collect_report(settings, url=gateway, window_s=window_s, redis_url=redis_url)
        )
    except ServekitError as exc:
        err_console.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(1) from exc
    paths = write_report(report, out)
    print_table(report)
    console.print(f"wrote {paths['html']} and {paths['json']}")
