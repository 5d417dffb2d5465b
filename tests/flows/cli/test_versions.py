"""The CLI refuses malformed versions before it touches Redis or the store."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


@pytest.mark.parametrize("version", ["../1", "1/2", "a\x01b", "v" * 65, ".hidden"])
@pytest.mark.parametrize(
    "command",
    [
        ["rollout", "set-primary", "fraud"],
        ["rollout", "shadow", "fraud"],
        ["rollout", "canary", "fraud"],
        ["rollout", "ab", "fraud"],
        ["report", "drift", "fraud", "--version"],
    ],
)
def test_malformed_versions_are_usage_errors(command: list[str], version: str) -> None:
    result = runner.invoke(app, [*command, version], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "invalid version" in result.output
