"""Expected outputs shown in README's code comments, and how an actual output meets them.

An expectation is a comment that holds a structure: JSON, a Python literal or a NumPy
array's repr (``# {"model": "fraud", ...}``, ``# [[0.0101 0.9899]]``). In Python blocks it
trails a ``print(...)`` or sits on the line after one; in shell blocks it is a comment line
of its own. Prose comments are not expectations.

The check is on the essential part: keys, labels, versions, shapes and integers exactly;
floats within 0.05; ``"..."`` matches any value, ``...`` as an entry allows more entries,
and ``...`` inside a string matches any text there.
"""

from __future__ import annotations

import ast
import io
import json
import math
import re
import tokenize
from dataclasses import dataclass
from typing import Any

MORE = "__more__"  # stands for a bare `...` entry: more keys or items may follow
FLOAT_TOLERANCE = 0.05

_BARE_IN_DICT = re.compile(r"(\{|,)\s*\.\.\.\s*(?=\})")
_BARE_IN_LIST = re.compile(r"(\[|,)\s*\.\.\.\s*(?=\])")
_NUMPY = re.compile(r"^[\[\]\s\d.eE+\-naif]+$")
_NUMBER_GAP = re.compile(r"(?<=[\d.\]fn])\s+(?=[\[\d.\-+ni])")


@dataclass(frozen=True)
class Expectation:
    """An expected output: where README shows it and what it holds."""

    line: int  # line within the block, 1-based
    text: str
    value: Any


def parse_structure(text: str) -> Any | None:
    """The dict or list ``text`` shows, or None when it is prose."""
    text = text.strip()
    if not text or text[0] not in "[{":
        return None
    spelled = _BARE_IN_LIST.sub(rf'\1 "{MORE}"', _BARE_IN_DICT.sub(rf'\1 "{MORE}": 0', text))
    candidates = [spelled]
    if _NUMPY.match(text) and "," not in text:  # a NumPy repr: [[0.0101 0.9899]]
        squeezed = re.sub(r"\[\s+", "[", re.sub(r"\s+\]", "]", text))
        candidates.append(_NUMBER_GAP.sub(", ", squeezed).replace("nan", "None"))
    for candidate in candidates:
        for loads in (json.loads, ast.literal_eval):
            try:
                value = loads(candidate)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(value, dict | list | tuple):
                return value
    return None


def python_expectations(code: str) -> list[Expectation]:
    """Structures in comments trailing a ``print(...)`` or on the line after one."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    print_ends = {
        node.end_lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name)
        and node.value.func.id == "print"
    }
    found = []
    for token in tokenize.generate_tokens(io.StringIO(code).readline):
        if token.type != tokenize.COMMENT:
            continue
        line = token.start[0]
        own_line = not token.line[: token.start[1]].strip()
        if (line in print_ends and not own_line) or (own_line and line - 1 in print_ends):
            text = token.string.lstrip("#").strip()
            value = parse_structure(text)
            if value is not None:
                found.append(Expectation(line, text, value))
    return found


def shell_expectations(code: str) -> list[Expectation]:
    """Structures in comment lines of a shell block."""
    found = []
    for number, line in enumerate(code.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            value = parse_structure(text)
            if value is not None:
                found.append(Expectation(number, text, value))
    return found


def mismatch(expected: Any, actual: Any, where: str = "") -> str | None:
    """Why ``actual`` does not show ``expected`` (None when it does)."""
    if isinstance(expected, str) and "..." in expected:
        pattern = ".*".join(re.escape(part) for part in expected.split("..."))
        ok = isinstance(actual, str) and re.fullmatch(pattern, actual, re.DOTALL)
        return None if ok else f"{where or 'value'}: {actual!r} is not {expected!r}"
    if isinstance(expected, dict):
        return _dict_mismatch(expected, actual, where)
    if isinstance(expected, list | tuple):
        return _list_mismatch(list(expected), actual, where)
    if isinstance(expected, bool) or expected is None or isinstance(expected, str):
        same = type(actual) is type(expected) and actual == expected
        return None if same else f"{where or 'value'}: {actual!r} is not {expected!r}"
    if isinstance(expected, int | float):
        if isinstance(actual, bool) or not isinstance(actual, int | float):
            return f"{where or 'value'}: {actual!r} is not a number"
        if isinstance(expected, int) and isinstance(actual, int):
            return None if actual == expected else f"{where or 'value'}: {actual} is not {expected}"
        if math.isclose(actual, expected, abs_tol=FLOAT_TOLERANCE, rel_tol=FLOAT_TOLERANCE):
            return None
        return f"{where or 'value'}: {actual} is not about {expected}"
    return f"{where or 'value'}: cannot compare {expected!r}"


def _dict_mismatch(expected: dict[Any, Any], actual: Any, where: str) -> str | None:
    if not isinstance(actual, dict):
        return f"{where or 'value'}: {actual!r} is not a mapping"
    keys = {k for k in expected if k != MORE}
    if keys - actual.keys():
        return f"{where or 'value'}: lacks {sorted(map(str, keys - actual.keys()))}"
    if MORE not in expected and actual.keys() - keys:
        return f"{where or 'value'}: has unexpected {sorted(map(str, actual.keys() - keys))}"
    for key in keys:
        why = mismatch(expected[key], actual[key], f"{where}.{key}" if where else str(key))
        if why:
            return why
    return None


def _list_mismatch(expected: list[Any], actual: Any, where: str) -> str | None:
    if not isinstance(actual, list | tuple):
        return f"{where or 'value'}: {actual!r} is not a list"
    more = bool(expected) and expected[-1] == MORE
    items = expected[:-1] if more else expected
    if len(actual) < len(items) or (not more and len(actual) != len(items)):
        return f"{where or 'value'}: {len(actual)} items, expected {len(items)}"
    for index, (want, got) in enumerate(zip(items, actual, strict=False)):
        why = mismatch(want, got, f"{where}[{index}]")
        if why:
            return why
    return None


def unmet(expectations: list[Expectation], stdout: str) -> list[str]:
    """For each expectation no output line (nor the whole output) meets, why not."""
    shown = [v for v in (parse_structure(line) for line in stdout.splitlines()) if v is not None]
    whole = parse_structure(stdout)
    if whole is not None:
        shown.append(whole)
    failures = []
    for expectation in expectations:
        reasons = [mismatch(expectation.value, value) for value in shown]
        if all(reasons):
            why = [f"  structured output {i + 1}: {r}" for i, r in enumerate(reasons)][:5]
            failures.append(
                f"block line {expectation.line}: expected {expectation.text}\n"
                + ("\n".join(why) or "  no structured output at all")
            )
    return failures
