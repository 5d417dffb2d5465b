"""Running one README block as a user would: shell blocks in bash, Python blocks in the
venv's interpreter, against the test's gateway instead of ``localhost:3000``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.readme.blocks import PYTHON, Block
from tests.readme.expect import Expectation, python_expectations, shell_expectations

_LOCAL_URL = re.compile(r"\b(?:localhost|127\.0\.0\.1):3000\b")
# curl answers an HTTP error with exit 0 unless told otherwise; README's examples must not
# pass on a 404. The newline keeps one answer per output line.
_SHELL_PRELUDE = """set -euo pipefail
curl() { command curl --fail-with-body --show-error --silent --write-out '\\n' "$@"; }
"""


@dataclass(frozen=True)
class Outcome:
    """What a block did."""

    returncode: int | None  # None: it ran past its time limit
    stdout: str
    stderr: str


def point_at(code: str, url: str) -> str:
    """``code`` with README's ``localhost:3000`` replaced by ``url``'s host and port."""
    return _LOCAL_URL.sub(url.split("://", 1)[-1], code)


def console_commands(code: str) -> str:
    """The commands of a console transcript: ``$ `` lines and their continuations."""
    commands, continued = [], False
    for line in code.splitlines():
        if line.startswith("$ ") or continued:
            command = line[2:] if line.startswith("$ ") and not continued else line
            commands.append(command)
            continued = command.rstrip().endswith("\\")
    return "\n".join(commands) + "\n"


def expectations(block: Block) -> list[Expectation]:
    """The outputs the block's comments (or a transcript's output lines) show."""
    if block.language in PYTHON:
        return python_expectations(block.code)
    if block.language == "console":
        shown = "\n".join(
            line if line.startswith("$ ") else f"# {line}" for line in block.code.splitlines()
        )
        return shell_expectations(shown)
    return shell_expectations(block.code)


def run_block(
    block: Block, url: str, env: dict[str, str], *, cwd: Path, workdir: Path, timeout_s: float
) -> Outcome:
    """Run ``block`` from ``cwd`` in its own session (so servers it leaves behind are stopped
    too); its script and outputs go to ``workdir``."""
    code = point_at(block.code, url)
    stem = workdir / f"readme_L{block.line}"
    if block.language in PYTHON:
        script = stem.with_suffix(".py")
        script.write_text(code)
        argv = [sys.executable, str(script)]
    else:
        script = stem.with_suffix(".sh")
        body = console_commands(code) if block.language == "console" else code
        script.write_text(_SHELL_PRELUDE + body)
        argv = ["bash", str(script)]
    out, err = stem.with_suffix(".out"), stem.with_suffix(".err")
    # Files, not pipes: a background process the block starts would hold a pipe open.
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=stdout, stderr=stderr,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            returncode: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            _stop_session(proc)
    return Outcome(returncode, out.read_text(errors="replace"), err.read_text(errors="replace"))


def _stop_session(proc: subprocess.Popen[bytes]) -> None:
    """End every process of the block's session."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
