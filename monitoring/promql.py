"""PromQL expressions against servekit's metric catalog: the series and label names an
expression uses (``promql_names``) and what in it servekit does not export
(``expression_problems``). Dashboards, alert rules and autoscaling queries are checked
with it, so a renamed metric breaks a test instead of a dashboard."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from monitoring.catalog import for_series

TARGET_LABELS = frozenset({"job", "instance"})  # Prometheus adds them to every scraped series

_TOKEN = re.compile(
    r"""(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
      | (?P<number>\d[\w.]*)
      | (?P<ident>[A-Za-z_:][\w:]*)
      | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^=<>(){}\[\],@])
      | (?P<space>\s+)""",
    re.VERBOSE,
)
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = _LABEL_LISTS | {
    "and", "or", "unless", "bool", "offset", "inf", "nan",
    # aggregations, which may take their grouping before the parenthesis: sum by (x) (...)
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip


@dataclass
class QueryNames:
    """What a PromQL expression names: its series (each with the label names its matchers
    use) and the labels its grouping clauses (by, without, on, ...) use."""

    series: dict[str, set[str]] = field(default_factory=dict)
    grouping: set[str] = field(default_factory=set)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read {expr[pos : pos + 20]!r} in {expr!r}")
        if m.lastgroup != "space":
            out.append((m.lastgroup or "", m.group()))
        pos = m.end()
    return out


def _closing(toks: list[tuple[str, str]], start: int, bracket: str) -> int:
    return next(j for j in range(start, len(toks)) if toks[j] == ("op", bracket))


def promql_names(expr: str) -> QueryNames:
    """The series and label names of a PromQL expression; function names, keywords, label
    values, durations and numbers are left out."""
    names, toks, i = QueryNames(), _tokens(expr), 0
    while i < len(toks):
        kind, text = toks[i]
        after = toks[i + 1] if i + 1 < len(toks) else ("", "")
        if (kind, text) == ("op", "["):  # a range or a subquery: durations only
            i = _closing(toks, i, "]")
        elif kind == "ident" and text in _LABEL_LISTS and after == ("op", "("):
            end = _closing(toks, i, ")")
            names.grouping |= {t for k, t in toks[i + 2 : end] if k == "ident"}
            i = end
        elif kind == "ident" and after != ("op", "(") and text not in _KEYWORDS:
            labels = names.series.setdefault(text, set())
            if after == ("op", "{"):
                end = _closing(toks, i, "}")
                labels |= {t for k, t in toks[i + 2 : end] if k == "ident"}
                i = end
        i += 1
    return names


def expression_problems(
    expr: str,
    external: Mapping[str, Collection[str]] | None = None,
    recorded: Collection[str] = (),
    target_labels: Collection[str] = TARGET_LABELS,
) -> list[str]:
    """What in a PromQL expression servekit does not export: unknown series, label names
    a series does not carry, grouping by a label none of its series has.

    Args:
        expr: the expression (dashboard variables already substituted).
        external: series of other exporters that are allowed, with their label names.
        recorded: series that recording rules produce (their labels are not checked).
        target_labels: labels the scrape adds to every series (Kubernetes service
            discovery adds namespace and pod, for instance).
    """
    external = external or {}
    found = promql_names(expr)
    targets = set(target_labels)
    out, allowed = [], set(targets)
    for name, matchers in found.series.items():
        family = for_series(name)
        if family is not None:
            labels = set(family.labels) | ({"le"} if name.endswith("_bucket") else set())
        elif name in external:
            labels = set(external[name])
        elif name in recorded:
            continue
        else:
            out.append(f"{name}: not in the catalog nor the external allow-list")
            continue
        allowed |= labels
        out += [f"{name}: no label {m!r}" for m in sorted(matchers - labels - targets)]
    if not set(found.series) & set(recorded):
        out += [f"grouping by {g!r}, which no series here has" for g in found.grouping - allowed]
    return out
