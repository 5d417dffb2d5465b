"""The decision report rendered: a self-contained HTML page (one table, verdicts in colour)
and a markdown table (the Prefect artifact)."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from itertools import groupby

from monitoring.decision_model import DECISIONS, DecisionReport, Row, Verdict

_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #202124;
       margin: 24px 32px; }
h1 { font-size: 22px; margin: 0 0 4px; }
.meta { color: #5f6368; margin-bottom: 14px; }
.counts span { display: inline-block; padding: 3px 10px; border-radius: 12px;
               margin-right: 8px; font-weight: 600; }
.problems { background: #fef7e0; border-left: 4px solid #f9ab00; padding: 8px 12px;
            margin: 12px 0; }
table { border-collapse: collapse; width: 100%; margin-top: 14px; }
th { text-align: left; background: #f1f3f4; padding: 8px; border-bottom: 2px solid #dadce0;
     position: sticky; top: 0; }
td { padding: 7px 8px; border-bottom: 1px solid #e8eaed; vertical-align: top; }
td.decision { font-weight: 600; background: #fafafa; border-right: 1px solid #e8eaed;
              width: 13%; }
td.decision .n { color: #80868b; font-weight: 400; }
td.value { font-variant-numeric: tabular-nums; }
td.subject { font-family: ui-monospace, monospace; font-size: 13px; }
.basis { color: #80868b; font-size: 12px; margin-top: 2px; }
.verdict { display: inline-block; padding: 2px 9px; border-radius: 10px; font-weight: 600;
           white-space: nowrap; font-size: 13px; }
.fine { background: #e6f4ea; color: #137333; }
.reconsider { background: #fce8e6; color: #b3261e; }
.nodata { background: #f1f3f4; color: #5f6368; }
tr.reconsider-row td:not(.decision) { background: #fff8f7; }
"""

_GATEWAY = '<span class="basis">gateway</span>'
_CLASS = {Verdict.FINE: "fine", Verdict.RECONSIDER: "reconsider", Verdict.NO_DATA: "nodata"}


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _row_html(row: Row, first: bool, span: int, number: int) -> str:
    cells = []
    if first:
        title = escape(DECISIONS.get(row.decision, row.decision))
        cells.append(
            f'<td class="decision" rowspan="{span}"><span class="n">{number}.</span> {title}</td>'
        )
    basis = f'<div class="basis">{escape(row.basis)}</div>' if row.basis else ""
    cells += [
        f"<td>{escape(row.signal)}{basis}</td>",
        f'<td class="subject">{escape(row.subject) or _GATEWAY}</td>',
        f'<td class="value">{escape(row.value)}</td>',
        f"<td>{escape(row.threshold)}</td>",
        f'<td><span class="verdict {_CLASS[row.verdict]}">{escape(row.verdict.value)}</span></td>',
        f"<td>{escape(row.action)}</td>",
    ]
    css = ' class="reconsider-row"' if row.verdict is Verdict.RECONSIDER else ""
    return f"<tr{css}>" + "".join(cells) + "</tr>"


def render_html(report: DecisionReport) -> str:
    """The report as one HTML page."""
    counts = report.counts()
    badges = "".join(
        f'<span class="{_CLASS[v]}">{counts[v.value]} {escape(v.value)}</span>' for v in Verdict
    )
    problems = ""
    if report.problems:
        items = "".join(f"<li>{escape(p)}</li>" for p in report.problems)
        problems = f'<div class="problems"><b>Not read:</b><ul>{items}</ul></div>'
    body = []
    numbers = {key: i for i, key in enumerate(DECISIONS, start=1)}
    for key, group in groupby(report.rows, key=lambda r: r.decision):
        rows = list(group)
        for i, row in enumerate(rows):
            body.append(_row_html(row, i == 0, len(rows), numbers.get(key, 0)))
    head = "".join(
        f"<th>{h}</th>"
        for h in ("Decision", "Signal", "Subject", "Measured", "Threshold", "Verdict", "Action")
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>servekit decision health</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<h1>servekit decision health</h1>"
        f'<div class="meta">Gateway {escape(report.gateway)} &middot; '
        f"{_when(report.generated_at)} &middot; measured {escape(report.window)} &middot; "
        "signals and trade-offs: docs/design.md</div>"
        f'<div class="counts">{badges}</div>{problems}'
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        "</body></html>\n"
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "-"


def render_markdown(report: DecisionReport) -> str:
    """The report as a markdown table (the Prefect artifact)."""
    counts = ", ".join(f"{n} {v}" for v, n in report.counts().items())
    lines = [
        "# servekit decision health",
        "",
        f"Gateway {report.gateway}, {_when(report.generated_at)}, measured {report.window}: "
        f"{counts}.",
        "",
        "| decision | signal | subject | measured | threshold | verdict | action |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report.rows:
        verdict = f"**{row.verdict.value}**" if row.verdict is Verdict.RECONSIDER else row.verdict
        cells = [DECISIONS.get(row.decision, row.decision), row.signal, row.subject, row.value]
        cells += [row.threshold, str(verdict), row.action]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if report.problems:
        lines += ["", "Not read: " + "; ".join(report.problems)]
    return "\n".join(lines)
