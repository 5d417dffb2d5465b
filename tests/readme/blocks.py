"""README's fenced code blocks and the markers that tell the README test what to do.

A block runs unless the line before it (blank lines aside) is a marker:

    <!-- readme-test: skip (needs a GPU) -->     not run; the reason is reported
    <!-- readme-test: fixture -->                 starts what the test's fixture stands for
                                                  (``make serve``): not run

Blocks in a language that is documentation rather than a command (yaml, json, text, a
plain fence, ...) are not run. A block in any other language must be marked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SHELL = frozenset({"bash", "sh", "shell", "console"})
PYTHON = frozenset({"python", "py", "python3"})
# Fences that hold text to read (manifests, outputs, maps), not commands to run.
TEXT = frozenset(
    {"", "text", "txt", "plain", "yaml", "yml", "json", "toml", "ini", "promql", "markdown",
     "md", "csv", "diff", "dockerfile", "mermaid", "http", "sql", "output"}
)  # fmt: skip

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_MARKER = re.compile(r"^\s*<!--\s*readme-test:\s*(?P<body>.*?)\s*-->\s*$")
_DIRECTIVE = re.compile(r"^(?P<kind>[a-z-]+)\s*(?:\((?P<reason>.*)\))?$")
MARKER_KINDS = ("skip", "fixture")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown document."""

    line: int  # 1-based line of the opening fence
    language: str
    code: str
    marker: str | None = None  # "skip" or "fixture"
    reason: str | None = None

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.language or 'plain'}"

    @property
    def runnable(self) -> bool:
        return self.language in SHELL or self.language in PYTHON

    @property
    def text_only(self) -> bool:
        return self.language in TEXT


@dataclass(frozen=True)
class Parsed:
    """The blocks of a document and what is wrong with its markers."""

    blocks: list[Block]
    problems: list[str]


def parse(path: Path) -> Parsed:
    """Every fenced block of ``path`` with the marker that precedes it."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    pending: tuple[int, str, str | None] | None = None  # marker line, kind, reason
    i = 0
    while i < len(lines):
        marker = _MARKER.match(lines[i])
        if marker:
            if pending:
                problems.append(f"line {pending[0]}: marker not followed by a code block")
            pending = _directive(i + 1, marker["body"], problems)
            i += 1
            continue
        fence = _FENCE.match(lines[i])
        if not fence:
            if lines[i].strip() and pending:
                problems.append(f"line {pending[0]}: marker not followed by a code block")
                pending = None
            i += 1
            continue
        end = _closing(lines, i, fence["fence"])
        indent = len(fence["indent"])
        body = "\n".join(line[indent:] for line in lines[i + 1 : end])
        language = (
            fence["info"].strip().split(maxsplit=1)[0].lower() if fence["info"].strip() else ""
        )
        kind, reason = (pending[1], pending[2]) if pending else (None, None)
        blocks.append(Block(i + 1, language, body + "\n", kind, reason))
        pending = None
        i = end + 1
    if pending:
        problems.append(f"line {pending[0]}: marker not followed by a code block")
    return Parsed(blocks, problems)


def _directive(line: int, body: str, problems: list[str]) -> tuple[int, str, str | None] | None:
    """The marker's kind and reason; a malformed one is recorded as a problem."""
    match = _DIRECTIVE.match(body)
    if not match or match["kind"] not in MARKER_KINDS:
        problems.append(f"line {line}: unknown marker {body!r}; use 'skip (reason)' or 'fixture'")
        return None
    reason = (match["reason"] or "").strip() or None
    if match["kind"] == "skip" and not reason:
        problems.append(f"line {line}: a skip needs its reason: 'skip (needs a GPU)'")
    return line, match["kind"], reason


def _closing(lines: list[str], start: int, fence: str) -> int:
    """Index of the fence closing the block opened at ``start`` (the end if unclosed)."""
    for j in range(start + 1, len(lines)):
        stripped = lines[j].strip()
        if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
            return j
    return len(lines)
