"""Running README blocks: the URL rewrite, transcripts, failing curls, leftover processes."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.readme.blocks import Block
from tests.readme.run import console_commands, expectations, point_at, run_block


def test_point_at_rewrites_the_default_gateway_only() -> None:
    code = 'curl localhost:3000/predict; x("http://127.0.0.1:3000"); y("localhost:30001")'
    assert point_at(code, "http://127.0.0.1:41234") == (
        'curl 127.0.0.1:41234/predict; x("http://127.0.0.1:41234"); y("localhost:30001")'
    )


def test_console_commands_and_outputs() -> None:
    code = '$ curl -s localhost:3000/models \\\n  -H "a: b"\n{"models": [...]}\n$ echo hi\nhi\n'
    assert console_commands(code) == 'curl -s localhost:3000/models \\\n  -H "a: b"\necho hi\n'
    block = Block(1, "console", code)
    assert [e.text for e in expectations(block)] == ['{"models": [...]}']


def _run(tmp_path: Path, language: str, code: str, timeout_s: float = 30):
    return run_block(
        Block(1, language, code), "http://127.0.0.1:9", dict(os.environ), cwd=tmp_path,
        workdir=tmp_path, timeout_s=timeout_s,
    )  # fmt: skip


def test_shell_blocks_stop_at_a_failure_and_curl_fails_on_errors(tmp_path: Path) -> None:
    assert _run(tmp_path, "bash", "echo one\necho two\n").stdout == "one\ntwo\n"
    failed = _run(tmp_path, "bash", "false\necho never\n")
    assert failed.returncode == 1 and "never" not in failed.stdout
    refused = _run(tmp_path, "bash", "curl localhost:3000/predict\n")  # port 9: nothing there
    assert refused.returncode not in (0, None)


def test_python_blocks_and_leftover_processes(tmp_path: Path) -> None:
    assert _run(tmp_path, "python", "print({'a': 1})\n").stdout == "{'a': 1}\n"
    started = time.monotonic()
    left = _run(tmp_path, "bash", "sleep 300 &\necho $! > pid\n")
    assert left.returncode == 0 and time.monotonic() - started < 20
    pid = int((tmp_path / "pid").read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    late = _run(tmp_path, "bash", "sleep 300\n", timeout_s=1)
    assert late.returncode is None
