"""``servekit report``: reports people read (decision health; drift)."""

from __future__ import annotations

import typer

from services.cli.report_decisions import decisions

report_app = typer.Typer(help="Reports: decision health of the serving choices, data drift.")
report_app.command("decisions")(decisions)
